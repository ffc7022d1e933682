"""Conversations' KV state on disk, so a session's next turn need not re-read its history.

When a slot that holds a session's conversation is taken by another request, the scheduler
copies that sequence's state out (`llama_state_seq_get_data`) and this store writes it, in a
thread of its own so decoding never waits on the disk. A later request of the same session
whose prompt starts with exactly the saved tokens gets the state back
(`llama_state_seq_set_data`) instead of computing it again.

Keyed by session id and the exact token prefix, never by similarity: a state is restored only
for its own session, and only when every saved token matches the start of the new prompt
(llama-server once restored the wrong conversation under load, llama.cpp#27148). Files past the
byte bound are deleted, least recently used first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["SavedState", "StateStore"]

log = logging.getLogger(__name__)

_MAGIC = b"ABXKV1\0\0"
_HEADER = struct.Struct("<8sII")  # magic, session id bytes, token count


class SavedState:
    """One conversation's tokens and the sequence state that holds them."""

    __slots__ = ("tokens", "data")

    def __init__(self, tokens: list[int], data: bytes) -> None:
        self.tokens = tokens
        self.data = data


class StateStore:
    """Saved sequence states of one model in `directory`, at most `max_bytes` in all."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.saved = 0
        self.restored = 0
        self.bytes_on_disk = 0  # as of the last write
        self._writes: queue.SimpleQueue[tuple[str, list[int], bytes] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # a file is never read while it is being replaced
        self._writer = threading.Thread(target=self._write_loop, name="kv-state", daemon=True)
        self._writer.start()

    def _path(self, session: str) -> Path:
        return self.directory / (hashlib.sha256(session.encode("utf-8")).hexdigest()[:32] + ".kv")

    # -- any thread ----------------------------------------------------------------------

    def save(self, session: str, tokens: Sequence[int], data: bytes) -> None:
        """Queue the state of `session` (holding `tokens`) for writing; returns at once."""
        if len(data) <= self.max_bytes:
            self._writes.put((session, list(tokens), data))

    def find(self, session: str, prompt: Sequence[int]) -> SavedState | None:
        """The saved state of `session` if its tokens are exactly the start of `prompt`."""
        path = self._path(session)
        with self._lock:
            try:
                with open(path, "rb") as file:
                    magic, n_session, n_tokens = _HEADER.unpack(file.read(_HEADER.size))
                    if magic != _MAGIC or file.read(n_session).decode("utf-8") != session:
                        return None  # another session's file (a hash collision) or not ours
                    if n_tokens >= len(prompt):
                        return None  # the prompt's last token must be decoded anyway
                    tokens = np.frombuffer(file.read(4 * n_tokens), dtype="<i4").tolist()
                    if tokens != list(prompt[:n_tokens]):
                        return None  # not exactly this conversation's start
                    data = file.read()
            except (OSError, struct.error, UnicodeDecodeError, ValueError):
                return None
            os.utime(path)  # recently used: the last to be deleted
        return SavedState(tokens, data)

    def close(self) -> None:
        """Finish the writes queued so far and stop the writer."""
        self._writes.put(None)
        self._writer.join()

    # -- the writer thread ---------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            item = self._writes.get()
            if item is None:
                return
            session, tokens, data = item
            try:
                self._write(session, tokens, data)
                self.saved += 1
            except OSError as exc:
                log.warning("could not save a conversation's KV state: %s", exc)

    def _write(self, session: str, tokens: list[int], data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(session)
        temporary = path.with_suffix(".tmp")
        encoded = session.encode("utf-8")
        with open(temporary, "wb") as file:
            file.write(_HEADER.pack(_MAGIC, len(encoded), len(tokens)))
            file.write(encoded)
            file.write(np.asarray(tokens, dtype="<i4").tobytes())
            file.write(data)
        with self._lock:
            os.replace(temporary, path)
        self._trim()

    def _trim(self) -> None:
        """Delete the least recently used files until the rest fit the byte bound."""
        files = []
        for path in self.directory.glob("*.kv"):
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            with self._lock:
                path.unlink(missing_ok=True)
            total -= size
        self.bytes_on_disk = total

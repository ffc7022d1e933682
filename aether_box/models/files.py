"""File plumbing for models: hashing, magic bytes, atomic writes and a pull lock."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CHUNK",
    "PARTIAL_PREFIX",
    "atomic_writer",
    "directory_lock",
    "fsync_dir",
    "is_gguf",
    "remove_partials",
    "sha256_file",
]

CHUNK = 1 << 20
# Temp files of unfinished writes start with this; nothing ever reads them as a model.
PARTIAL_PREFIX = ".partial-"
GGUF_MAGIC = b"GGUF"


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """The hex sha256 of a file, reporting progress in bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


def is_gguf(path: Path) -> bool:
    """Whether the file starts with the GGUF magic bytes."""
    with open(path, "rb") as handle:
        return handle.read(4) == GGUF_MAGIC


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(target: Path) -> Iterator[BinaryIO]:
    """Write `target` through a temp file in its dir: fsync, then rename over it.

    If the body raises (or the process dies), `target` is untouched and only a
    ``.partial-*`` file may remain, which no reader mistakes for a model.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=PARTIAL_PREFIX + target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # the data dir's files are its user's alone (aether_box.private)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_partials(directory: Path) -> None:
    """Delete temp files left by interrupted writes under `directory`."""
    if directory.is_dir():
        for leftover in directory.rglob(PARTIAL_PREFIX + "*"):
            with contextlib.suppress(OSError):
                leftover.unlink()


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` across processes (pulls never interleave)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): pulls there are not serialised
        yield
        return
    with open(directory / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

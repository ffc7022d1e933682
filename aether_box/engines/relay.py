"""One generation's text and outcome, from its scheduler's thread to the event loop.

The scheduler's thread posts every piece of text as it is sampled. Waking the event loop for
each one would put a third busy thread beside llama.cpp's on every token, and on a small
machine llama.cpp's threads wait for each other at every operation, so each wake-up costs
them more than its own time. Here the loop is woken only when it waits for text (after a
PARTIAL it pauses for `gap` while pieces gather) and always for the outcome, which never
waits: the reply's last text goes out as soon as the generation ends.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio

__all__ = ["Relay"]

_PENDING = object()


class Relay:
    """Pieces of text (str) and then one outcome (anything else), posted from another thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._outcome: Any = _PENDING
        self._armed = False  # the loop waits for text: the next piece wakes it
        self._event = asyncio.Event()

    def post(self, item: Any) -> None:
        """Hand over a piece or the outcome (from the scheduler's thread)."""
        with self._lock:
            if isinstance(item, str):
                self._pieces.append(item)
                wake, self._armed = self._armed, False
            else:
                self._outcome = item
                wake = True
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop has closed (shutdown): nobody is listening
                pass

    def _wake(self) -> None:  # on the loop: whichever event it waits on now
        self._event.set()

    async def take(self) -> tuple[str, Any]:
        """The text gathered since the last call (waiting for some) and the outcome, or
        `Relay.PENDING` while the generation goes on."""
        with self._lock:
            waiting = not self._pieces and self._outcome is _PENDING
            if waiting:
                self._event = asyncio.Event()
                self._armed = True
        if waiting:
            await self._event.wait()
        with self._lock:
            text = "".join(self._pieces)
            self._pieces.clear()
            self._armed = False
            return text, self._outcome

    async def pause(self, gap: float) -> None:
        """Let pieces gather for up to `gap` seconds; the outcome ends the pause at once."""
        with self._lock:
            if self._outcome is not _PENDING:
                return
            self._event = asyncio.Event()
        with anyio.move_on_after(gap):
            await self._event.wait()

    PENDING = _PENDING

"""Replies held while the broker drains a backlog, so that each peer gets them in groups.

A message sent alone wakes libzmq's I/O thread, and then the peer's, for that one message:
several microseconds of CPU on each side, more than the broker spends routing it. While the
socket still holds requests, replies to the same peer wait here and go out together: one
wake-up and one write for the group. A group is sent when it is full (half the backlog the
last drain found, so the peer always keeps requests in flight), when a message from or a
reply to another peer comes (so no peer waits on another's work), and when the backlog is
drained. A reply waits at most while the broker handles the next few requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["GROUP_MAX", "ReplyGroups"]

# The most replies one group holds: a wake-up shared by 16 replies costs each a fraction of a
# microsecond, and the first of them waits for no more than 15 others to be routed.
GROUP_MAX = 16


class ReplyGroups:
    """Holds replies (multipart frames, the peer's identity first) and sends them in groups."""

    def __init__(self, send: Callable[[list[Any]], None]) -> None:
        self._send = send
        self._held: list[list[Any]] = []
        self.size = 1  # replies a group may hold; set from each drain's backlog

    def add(self, frames: list[Any]) -> None:
        """Hold a reply, sending the group first if it is for another peer, or after if full."""
        if self._held and frames[0] != self._held[0][0]:
            self.flush()
        self._held.append(frames)
        if len(self._held) >= self.size:
            self.flush()

    def next_from(self, peer: bytes) -> None:
        """A message from `peer` is next: a group held for anyone else goes now."""
        if self._held and peer != self._held[0][0]:
            self.flush()

    def flush(self) -> bool:
        """Send what is held; whether there was anything."""
        if not self._held:
            return False
        held, self._held = self._held, []
        for frames in held:
            self._send(frames)
        return True

    def drained(self, backlog: int) -> None:
        """A drain handled `backlog` messages: groups may hold half as many from now on."""
        self.size = max(1, min(GROUP_MAX, backlog // 2))

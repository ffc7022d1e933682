"""Replies held while the broker drains a backlog, so that each peer gets them in groups.

A message sent alone wakes libzmq's I/O thread, and then the peer's, for that one message:
several microseconds of CPU on each side, more than the broker spends routing it. While the
socket still holds requests, replies to a peer that keeps many requests in flight wait here
and go out together: one wake-up and one write for the group. A peer's group holds half as
many replies as the peer had requests in the last drain (so it always keeps some in flight;
a peer with one request at a time gets each reply at once), and is sent when full or when
the backlog is drained, or after the broker's batch of messages (DRAIN_BATCH) in any case: a
reply waits no longer than routing what the socket already held when it was made.
"""

from __future__ import annotations

from collections import Counter
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
        self._held: dict[bytes, list[list[Any]]] = {}  # per peer, in the order made
        self._sizes: dict[bytes, int] = {}  # how many replies each peer's group holds
        self._requests: Counter[bytes] = Counter()  # per peer, in the drain under way
        self._groups = 0  # groups of two replies or more sent, and the replies in them
        self._grouped = 0

    def request_from(self, peer: bytes) -> None:
        """Count a message from `peer` in this drain."""
        self._requests[peer] += 1

    def add(self, frames: list[Any]) -> None:
        """Hold a reply for its peer's group, and send the group if that fills it."""
        peer = frames[0]
        size = self._sizes.get(peer, 1)
        if size == 1:
            self._send(frames)
            return
        group = self._held.setdefault(peer, [])
        group.append(frames)
        if len(group) >= size:
            del self._held[peer]
            self._send_all(group)

    def flush(self) -> bool:
        """Send everything held; whether there was anything."""
        if not self._held:
            return False
        held, self._held = self._held, {}
        for group in held.values():
            self._send_all(group)
        return True

    def drained(self) -> None:
        """The backlog is drained: each peer's groups hold half its requests in this drain."""
        if not self._requests:
            return  # a wake-up that found nothing says nothing about the peers
        self._sizes = {  # fewer than 4 requests: groups of one, that is, each reply at once
            peer: min(GROUP_MAX, count // 2) for peer, count in self._requests.items() if count >= 4
        }
        self._requests.clear()

    def snapshot(self) -> dict[str, int]:
        """What `status` shows: groups sent so far, and the replies that went in them."""
        return {"groups": self._groups, "replies": self._grouped}

    def _send_all(self, group: list[list[Any]]) -> None:
        if len(group) > 1:
            self._groups += 1
            self._grouped += len(group)
        for frames in group:
            self._send(frames)

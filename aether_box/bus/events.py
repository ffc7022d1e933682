"""Published events: one PUB socket; topics ``status.``, ``metrics.``, ``log.``, ``peer.``.

A message is two frames: the topic, then a msgpack map. Slow subscribers never stall the
box: sends never wait, and what a full queue refuses is dropped and counted.

The queue is bounded in bytes, not only in events: an event is at most MAX_EVENT_BYTES (a
bigger one is dropped and counted under its topic), and each subscriber's queue holds at
most QUEUE_EVENTS of them, so a subscriber that stops reading costs the box at most
QUEUE_BYTES. ZeroMQ drops what a slow subscriber's full queue cannot take without telling
the sender, so every event carries `seq`, one more than the last: a subscriber counts its
own gaps (the box's `dropped` counts what it refused itself).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from aether_box.bus.security import CurveKeys, bind_all
from aether_box.logs import capped

__all__ = ["MAX_EVENT_BYTES", "QUEUE_BYTES", "Events", "EventLogHandler"]

MAX_EVENT_BYTES = 16 * 2**10
QUEUE_EVENTS = 1000
QUEUE_BYTES = MAX_EVENT_BYTES * QUEUE_EVENTS  # per subscriber, at most


class Events:
    """Publishes events to every subscriber of the box."""

    def __init__(
        self,
        context: zmq.asyncio.Context,
        endpoints: list[str],
        curve: CurveKeys | None,
        *,
        curve_loopback: bool = False,
    ) -> None:
        # A plain socket: it only sends, so it needs no event-loop integration.
        self._socket = context.socket(zmq.PUB, socket_class=zmq.Socket)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._socket.linger = 0
        self._socket.sndhwm = QUEUE_EVENTS
        self.bound = bind_all(
            self._socket,
            endpoints,
            curve,
            curve_loopback=curve_loopback,
            option="bus.event_endpoints",
        )
        self.published = 0
        self.seq = 0
        self.dropped: Counter[str] = Counter()

    def publish(self, topic: str, body: Mapping[str, Any]) -> None:
        """Publish one event; never waits. Safe to call from worker threads."""
        if threading.get_ident() != self._thread:
            # zmq sockets belong to one thread: hand the event to the loop's thread.
            self._loop.call_soon_threadsafe(self.publish, topic, dict(body))
            return
        kind = topic.split(".", 1)[0]
        payload = msgpack.packb({"ts": time.time(), "seq": self.seq + 1, **body}, default=str)
        if len(payload) > MAX_EVENT_BYTES:
            self.dropped[kind] += 1
            return
        try:
            self._socket.send_multipart([topic.encode(), payload], flags=zmq.NOBLOCK)
            self.seq += 1
            self.published += 1
        except zmq.Again:
            self.dropped[kind] += 1

    def close(self) -> None:
        self._socket.close(linger=0)


class EventLogHandler(logging.Handler):
    """Sends log records as ``log.<level>`` events (the TUI's live tail)."""

    def __init__(self, events: Events, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.events.publish(
                f"log.{record.levelname.lower()}",
                {"logger": record.name, "message": capped(record.getMessage())},
            )
        except Exception:  # logging must never raise into the caller
            self.handleError(record)

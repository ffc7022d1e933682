"""An MDP/0.2 worker for external processes that offer a service on the box's bus.

def shout(body):                       # return a dict, or yield dicts to stream
    return {"text": body["text"].upper()}

Worker("ipc:///path/bus.sock", "shout", shout).run()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import zmq

from aether_box.bus.protocol import RID, WORKER, WorkerCmd, decode_body, encode_body
from aether_box.errors import BoxError

__all__ = ["Worker"]

WorkerHandler = Callable[[dict[str, Any]], Mapping[str, Any] | Iterator[Mapping[str, Any]]]


class Worker:
    """Registers `service` with the broker and answers its requests with `handler`."""

    def __init__(
        self, endpoint: str, service: str, handler: WorkerHandler, *, heartbeat_s: float = 2.5
    ) -> None:
        self.endpoint = endpoint
        self.service = service
        self.handler = handler
        self.heartbeat_s = heartbeat_s
        self._socket: zmq.Socket | None = None

    def _send(self, command: bytes, *frames: Any) -> None:
        assert self._socket is not None
        self._socket.send_multipart([WORKER, command, *frames])

    def run(self, stop_after: int | None = None) -> None:
        """Serve requests until the broker disconnects us (or after `stop_after` requests)."""
        self._socket = zmq.Context.instance().socket(zmq.DEALER)
        self._socket.linger = 0
        self._socket.connect(self.endpoint)
        self._send(WorkerCmd.READY, self.service.encode())
        served, last_sent = 0, time.monotonic()
        try:
            while stop_after is None or served < stop_after:
                if self._socket.poll(self.heartbeat_s * 1000):
                    frames = self._socket.recv_multipart()
                    if len(frames) < 2 or frames[0] != WORKER:
                        continue
                    if frames[1] == WorkerCmd.DISCONNECT:
                        return
                    if frames[1] == WorkerCmd.REQUEST and len(frames) >= 4:
                        self._answer(frames[2], frames[4:])
                        served += 1
                        last_sent = time.monotonic()
                if time.monotonic() - last_sent >= self.heartbeat_s:
                    self._send(WorkerCmd.HEARTBEAT)
                    last_sent = time.monotonic()
        finally:
            self._socket.close(linger=0)

    def _answer(self, client: bytes, body_frames: list[bytes]) -> None:
        rid = None
        try:
            body = decode_body(body_frames)
            rid = body.pop(RID, None)
            result = self.handler(body)
            if not isinstance(result, Mapping):  # a generator streams PARTIALs
                for part in result:
                    self._reply(client, WorkerCmd.PARTIAL, dict(part), rid)
                result = {}
            reply = dict(result)
        except BoxError as exc:
            reply = exc.to_wire()
        except Exception as exc:
            reply = BoxError(f"{self.service} worker failed: {exc!r}").to_wire()
        self._reply(client, WorkerCmd.FINAL, reply, rid)

    def _reply(self, client: bytes, command: bytes, body: dict[str, Any], rid: Any) -> None:
        if rid is not None:
            body[RID] = rid
        self._send(command, client, b"", *encode_body(body))

"""An MDP/0.2 worker for external processes that offer a service on the box's bus.

def shout(body):                       # return a dict, or yield dicts to stream
    return {"text": body["text"].upper()}

Worker("ipc:///path/bus.sock", "shout", shout).run()

One request at a time; the handler runs in a thread of its own while `run()` keeps the
worker's heartbeats going, so a call may take longer than the box's heartbeat window. What it
returns must be what the bus carries (strings, numbers, lists, maps, bytes, numpy arrays);
anything else is an error reply, not a dead worker.

A worker may also offer tools (see aether_box.tools): each decorated function becomes a tool
named after it, its arguments checked by the box against `schema` before it is called, and
the worker registers them with the box's `tools` service when it starts::

    worker = Worker("ipc:///path/bus.sock", "weather")

    @worker.tool("Tomorrow's weather forecast for a city", effect="read",
                 schema={"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]})
    def forecast(city):
        return {"city": city, "sky": "clear"}

    worker.run()
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import zmq

from aether_box.bus.protocol import RID, WORKER, WorkerCmd, decode_body, encode_body
from aether_box.errors import BadRequest, BoxError, NotFound

__all__ = ["Worker"]

log = logging.getLogger(__name__)

WorkerHandler = Callable[[dict[str, Any]], Mapping[str, Any] | Iterator[Mapping[str, Any]]]
# What a tool call sends the worker (see aether_box.tools): {"op": TOOL_OP, "tool", "arguments"}.
TOOL_OP = "tool"
EFFECTS = ("read", "write", "send")


class Worker:
    """Registers `service` with the broker and answers its requests with `handler`."""

    def __init__(
        self,
        endpoint: str,
        service: str,
        handler: WorkerHandler | None = None,
        *,
        heartbeat_s: float = 2.5,
        register_timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.service = service
        self.handler = handler
        self.heartbeat_s = heartbeat_s
        self.register_timeout_s = register_timeout_s
        self.tools: dict[str, dict[str, Any]] = {}
        self._tool_functions: dict[str, Callable[..., Any]] = {}
        self._socket: zmq.Socket | None = None

    def tool(
        self,
        description: str,
        *,
        schema: Mapping[str, Any] | None = None,
        effect: str,
        private: bool = False,
        examples: list[str] | None = None,
        name: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Offer the decorated function as a tool: called with the arguments as keywords.

        `effect` says what it does beyond answering: "read" (nothing), "write" (changes
        state) or "send" (data leaves the machine); `private` that its results are the
        user's private data. `examples` are tasks it serves, which help the box pick it.
        """
        if effect not in EFFECTS:
            raise ValueError(f"effect must be one of {EFFECTS}, got {effect!r}")

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            tool_name = name or function.__name__
            self.tools[tool_name] = {
                "name": tool_name,
                "description": description,
                "schema": dict(schema or {"type": "object", "properties": {}}),
                "effect": effect,
                "private": private,
                "examples": list(examples or []),
            }
            self._tool_functions[tool_name] = function
            return function

        return register

    def _call_tool(self, body: dict[str, Any]) -> Mapping[str, Any]:
        name = body.get("tool")
        function = self._tool_functions.get(name) if isinstance(name, str) else None
        if function is None:
            raise NotFound(f"{self.service} has no tool {name!r}; tools: {sorted(self.tools)}")
        arguments = body.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise BadRequest("field 'arguments' must be a map")
        result = function(**arguments)
        return {"result": result}

    def _register_tools(self) -> None:
        """Tell the box's `tools` service what this worker offers (a plain client request)."""
        from aether_box.bus.client import Client

        body = {"op": "register", "service": self.service, "tools": list(self.tools.values())}
        with Client(self.endpoint, timeout=self.register_timeout_s, curve=False) as client:
            client.request("tools", body)

    def _ready(self) -> None:
        """Offer the service to the broker, and the tools to the box's `tools` service."""
        self._send(WorkerCmd.READY, self.service.encode())
        if self.tools:
            self._register_tools()

    def _send(self, command: bytes, *frames: Any) -> None:
        assert self._socket is not None
        self._socket.send_multipart([WORKER, command, *frames])

    def run(self, stop_after: int | None = None) -> None:
        """Serve requests until stopped (or after `stop_after` requests). When the box
        restarts (it forgets its workers), the worker registers again, as MDP workers do; a
        box that refuses it (its service name is the box's own) ends it with BadRequest."""
        self._socket = zmq.Context.instance().socket(zmq.DEALER)
        self._socket.linger = 0
        self._socket.connect(self.endpoint)
        served = 0
        try:
            self._ready()
            accepted = False  # the box has spoken to this worker since its READY
            last_sent = time.monotonic()
            while stop_after is None or served < stop_after:
                if self._socket.poll(self.heartbeat_s * 1000):
                    frames = self._socket.recv_multipart()
                    if len(frames) < 2 or frames[0] != WORKER:
                        continue
                    if frames[1] == WorkerCmd.DISCONNECT:
                        if not accepted:
                            raise BadRequest(
                                f"the box refused worker service {self.service!r}: the box "
                                "serves that name itself; choose another service name"
                            )
                        # A box that restarted does not know us: say READY to it again.
                        log.warning("the box forgot worker %s: registering again", self.service)
                        self._ready()
                        accepted = False
                        continue
                    accepted = True
                    if frames[1] == WorkerCmd.REQUEST and len(frames) >= 4:
                        self._answer(frames[2], frames[4:])
                        served += 1
                        last_sent = time.monotonic()
                if time.monotonic() - last_sent >= self.heartbeat_s:
                    self._send(WorkerCmd.HEARTBEAT)
                    last_sent = time.monotonic()
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM as SystemExit, tools the box refused): tell the broker
            # at once; a worker that just vanishes is found only when its heartbeats stop,
            # and a request sent to it meanwhile fails.
            self._send(WorkerCmd.DISCONNECT)
            self._socket.close(linger=100)
            raise
        finally:
            self._socket.close(linger=0)

    def _answer(self, client: bytes, body_frames: list[bytes]) -> None:
        """Answer one request. The handler runs in a thread while this one heartbeats, so a
        call longer than the broker's heartbeat window does not cost the worker its place."""
        replies: queue.SimpleQueue[tuple[bytes, list[Any]]] = queue.SimpleQueue()
        threading.Thread(
            target=self._compute,
            args=(body_frames, replies),
            name=f"{self.service}-call",
            daemon=True,  # Ctrl-C mid-call ends the worker; the broker hears DISCONNECT
        ).start()
        while True:
            try:
                command, frames = replies.get(timeout=self.heartbeat_s)
            except queue.Empty:
                self._send(WorkerCmd.HEARTBEAT)
                continue
            self._send(command, client, b"", *frames)
            if command == WorkerCmd.FINAL:
                return

    def _compute(
        self, body_frames: list[bytes], replies: queue.SimpleQueue[tuple[bytes, list[Any]]]
    ) -> None:
        """Run the handler on one request; put its encoded PARTIALs, then its FINAL."""
        rid = None
        try:
            body = decode_body(body_frames)
            rid = body.pop(RID, None)
            if self.tools and body.get("op") == TOOL_OP:
                result = self._call_tool(body)
            elif self.handler is not None:
                result = self.handler(body)
            else:
                raise BadRequest(f"{self.service} answers only tool calls ({{'op': 'tool'}})")
            if not isinstance(result, Mapping):  # a generator streams PARTIALs
                for part in result:
                    replies.put((WorkerCmd.PARTIAL, self._encode(dict(part), rid)))
                result = {}
            final = self._encode(dict(result), rid)
        except BoxError as exc:
            final = self._encode(exc.to_wire(), rid)
        except Exception as exc:
            final = self._encode(BoxError(f"{self.service} worker failed: {exc!r}").to_wire(), rid)
        replies.put((WorkerCmd.FINAL, final))

    def _encode(self, body: dict[str, Any], rid: Any) -> list[Any]:
        """The body's frames; BadRequest naming what the bus cannot carry (a datetime, a set)."""
        if rid is not None:
            body[RID] = rid
        try:
            return list(encode_body(body))
        except (TypeError, ValueError, OverflowError) as exc:
            raise BoxError(
                f"{self.service} worker answered with something the bus cannot carry ({exc}); "
                "return dicts of strings, numbers, lists, bytes and numpy arrays"
            ) from exc

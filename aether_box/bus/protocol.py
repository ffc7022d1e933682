"""Majordomo Protocol 0.2 (ZeroMQ RFC 18) constants and the box's body codec.

A body is one msgpack map, followed by one raw frame per numeric array. Arrays are
top-level values of the map; on the wire the map lists them under ``_arrays`` as
``[name, dtype, shape]`` in frame order, so no numbers travel as lists or base64.
Top-level ``bytes`` values of 64 KiB or more travel the same way, as ``[name, "bytes",
[length]]``: inside msgpack they would be copied on every hop. Large frames are sent
without copying and read without copying until the body is decoded.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import zmq

from aether_box.errors import BoxError, ProtocolError, error_for_code

__all__ = [
    "CANCEL_SERVICE",
    "CLIENT",
    "RID",
    "pop_request_id",
    "recv_message",
    "ROUTED",
    "WORKER",
    "FrameBytes",
    "ClientCmd",
    "WorkerCmd",
    "decode_body",
    "encode_body",
    "encode_error",
    "raise_if_error",
    "recv_frames",
    "send_frames",
]

CLIENT = b"MDPC02"
WORKER = b"MDPW02"

# A client cancels one of its in-flight requests by sending {"rid": ...} here.
CANCEL_SERVICE = "box.cancel"
# The body key that carries a request id, so replies and cancels can name their request.
RID = "_rid"
# In a request's body: sent on by a box that lacked the model; the receiver must not send it on.
ROUTED = "_routed"


class ClientCmd:
    """Client-side command bytes as RFC 18 writes them."""

    REQUEST = b"\x01"
    PARTIAL = b"\x02"
    FINAL = b"\x03"


class WorkerCmd:
    """Worker-side command bytes (also what majortomo uses for its clients)."""

    READY = b"\x01"
    REQUEST = b"\x02"
    PARTIAL = b"\x03"
    FINAL = b"\x04"
    HEARTBEAT = b"\x05"
    DISCONNECT = b"\x06"


# One received frame: bytes, or a read-only view of a large message (see recv_frames).
FrameBytes = bytes | memoryview

ARRAYS_KEY = "_arrays"
BYTES_DTYPE = "bytes"
# From this size a frame is sent and received zero-copy (pyzmq's own threshold), and a
# bytes value leaves the msgpack map for a frame of its own.
LARGE_FRAME = zmq.COPY_THRESHOLD
# Only plain numeric little-endian dtypes travel; anything else is a protocol error.
# Bounds on a described shape, so that no product or reshape can overflow.
MAX_DIMS = 8
MAX_AXIS = 2**31 - 1
_ALLOWED_DTYPES = frozenset("<f2 <f4 <f8 <i1 <i2 <i4 <i8 |u1 |i1 <u2 <u4 |b1".split())


def encode_body(body: Mapping[str, Any]) -> list[bytes | memoryview]:
    """Frames for a body map: msgpack header, then one raw frame per numpy array value."""
    if type(body) is dict and not _has_own_frames(body):
        return [_packer().pack(body)]  # the common case: no array, no large bytes
    header: dict[str, Any] = {}
    frames: list[bytes | memoryview] = []
    arrays: list[list[Any]] = []
    for key, value in body.items():
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
            arrays.append([key, array.dtype.str, list(array.shape)])
            frames.append(array.data.cast("B") if array.size else b"")
        elif type(value) is bytes and len(value) >= LARGE_FRAME:
            arrays.append([key, BYTES_DTYPE, [len(value)]])
            frames.append(value)
        else:
            header[key] = value
    if arrays:
        header[ARRAYS_KEY] = arrays
    return [_packer().pack(header), *frames]


def _has_own_frames(body: dict[str, Any]) -> bool:
    """Whether any top-level value travels as a frame of its own (an array, large bytes)."""
    for value in body.values():  # a plain loop: half the cost of any(map(...)) here
        if isinstance(value, np.ndarray) or (type(value) is bytes and len(value) >= LARGE_FRAME):
            return True
    return False


_packers = threading.local()


def _packer() -> msgpack.Packer:
    # A Packer reused costs a third of msgpack.packb, which makes one per call; one per
    # thread, as `default` runs Python code, during which another thread could pack.
    try:
        return _packers.packer
    except AttributeError:
        _packers.packer = msgpack.Packer(default=_to_msgpack)
        return _packers.packer


def decode_body(frames: Sequence[FrameBytes]) -> dict[str, Any]:
    """The body map for received frames; arrays come back as read-only numpy arrays."""
    if not frames:
        return {}
    try:
        header = msgpack.unpackb(frames[0], strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"body is not a msgpack map ({exc}); send msgpack.packb(dict)") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"body must be a msgpack map, got {type(header).__name__}")
    if len(frames) == 1 and ARRAYS_KEY not in header:
        return header  # the common case: no array frames
    described = header.pop(ARRAYS_KEY, [])
    if not isinstance(described, list) or len(described) != len(frames) - 1:
        raise ProtocolError(
            f"{len(frames) - 1} array frames but {ARRAYS_KEY} describes "
            f"{len(described) if isinstance(described, list) else 'none'}"
        )
    for spec, frame in zip(described, frames[1:], strict=True):
        name, value = _decode_frame(spec, frame)
        header[name] = value
    return header


def _decode_frame(spec: Any, frame: FrameBytes) -> tuple[str, np.ndarray | bytes]:
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)):
        raise ProtocolError(f"array description must be [name, dtype, shape], got {spec!r}")
    name, dtype, shape = spec
    if dtype == BYTES_DTYPE:
        if shape != [len(frame)]:
            raise ProtocolError(f"bytes {name!r}: frame holds {len(frame)} bytes, not {shape}")
        return name, bytes(frame)
    if dtype not in _ALLOWED_DTYPES:
        raise ProtocolError(f"array {name!r}: dtype {dtype!r} not allowed; use '<f4'")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_DIMS
        and all(isinstance(n, int) and 0 <= n <= MAX_AXIS for n in shape)
    ):
        raise ProtocolError(
            f"array {name!r}: shape must be a list of at most {MAX_DIMS} ints from 0 to {MAX_AXIS}"
        )
    array = np.frombuffer(frame, dtype=np.dtype(dtype))
    expected = math.prod(shape)  # exact: numpy's int64 product could wrap
    if array.size != expected:
        raise ProtocolError(
            f"array {name!r}: frame holds {array.size} values but shape {shape} needs {expected}"
        )
    return name, array.reshape(shape)


def pop_request_id(body: dict[str, Any], key: str = RID) -> int | str | bytes | None:
    """Remove and return a body's request id: an int, a short string or bytes, or None.

    A request id keys the table of running requests: anything else (a list, a map) is a
    protocol error, never a crash of the code that looks it up.
    """
    rid = body.pop(key, None)
    if type(rid) is int and -(2**63) <= rid < 2**64:
        return rid  # what the box's own clients send
    if rid is None or (
        isinstance(rid, (int, str, bytes)) and not isinstance(rid, bool) and _short(rid)
    ):
        return rid
    raise ProtocolError(
        f"a request id ({key}) must be an integer or a string of at most 64 characters, "
        f"got {type(rid).__name__}"
    )


def _short(rid: int | str | bytes) -> bool:
    return len(rid) <= 64 if isinstance(rid, (str, bytes)) else -(2**63) <= rid < 2**64


def encode_error(error: BoxError) -> list[bytes | memoryview]:
    """Frames for an error reply."""
    return encode_body(error.to_wire())


def raise_if_error(body: Mapping[str, Any]) -> None:
    """Raise the typed exception a reply carries, if it carries one."""
    error = body.get("error")
    if isinstance(error, dict) and "code" in error:
        raise error_for_code(str(error["code"]), str(error.get("message", "")))


# Plain int flags and pyzmq's compiled methods: the Python layer of send_multipart and
# recv_multipart builds enum flags per frame, which costs more than a small send itself.
_MORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv


def send_frames(socket: zmq.Socket, frames: list[Any], *, wait: bool = False) -> None:
    """Send one multipart message; without `wait`, raise zmq.Again if the queue is full."""
    last = 0 if wait else _NOBLOCK
    for frame in frames[:-1]:
        _send(socket, frame, _MORE | last, len(frame) < LARGE_FRAME)
    _send(socket, frames[-1], last, len(frames[-1]) < LARGE_FRAME)


def recv_frames(socket: zmq.Socket, *, wait: bool = False) -> list[FrameBytes]:
    """Receive one multipart message; without `wait`, raise zmq.Again if none is queued.

    Frames come back as bytes, except large ones: a read-only view of the received
    message, so a megabyte is not copied before anyone needs it.
    """
    # A Frame knows whether more follow; asking the socket (RCVMORE) builds an enum per call.
    frame = _recv(socket, 0 if wait else _NOBLOCK, False)
    parts = [frame.bytes if len(frame) < LARGE_FRAME else frame.buffer]
    while frame.more:
        frame = _recv(socket, _NOBLOCK, False)  # the rest of a message arrives with its first
        parts.append(frame.bytes if len(frame) < LARGE_FRAME else frame.buffer)
    return parts


def _to_msgpack(value: Any) -> Any:
    # numpy scalars and small arrays inside nested structures become plain Python values.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} in a message body")


def recv_message(socket: zmq.Socket) -> tuple[list[FrameBytes], zmq.Frame]:
    """Like recv_frames (never waits), and the first frame itself, for its connection's
    metadata (peer address, the User-Id the ZAP handler gave it)."""
    first = frame = _recv(socket, _NOBLOCK, False)
    parts = [frame.bytes if len(frame) < LARGE_FRAME else frame.buffer]
    while frame.more:
        frame = _recv(socket, _NOBLOCK, False)
        parts.append(frame.bytes if len(frame) < LARGE_FRAME else frame.buffer)
    return parts, first

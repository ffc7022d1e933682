"""Access scopes: what a connection to the bus may ask of the box.

Three scopes, each allowing what the one before it does and more:

- ``read``: look (status, lists, search, history);
- ``use``: work with the box (chat, embed, add to memory, sessions); what most apps need;
- ``admin``: destroy or reconfigure (memory drop and delete, federation and grid changes,
  models, projectors and adapters added or removed, tuner actions).

A connection's scope comes from how it reached the box. The ipc socket in the data dir is
``admin`` (only its user can open it: the data dir is 0700). A CURVE client carries the scope
its public key was authorized with (`aether-box keys authorize FILE --scope ...`), which the
ZAP handler hands to the broker in the connection's User-Id (with the key itself). Plain tcp on loopback (any local
user can connect there) is ``use``, or ``admin`` when ``bus.loopback_admin`` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
import zmq

from aether_box.errors import Forbidden

__all__ = [
    "ADMIN",
    "READ",
    "SCOPES",
    "USE",
    "allows_every_op",
    "floor_scope",
    "connection_key",
    "connection_scope",
    "refusal",
    "required_scope",
    "user_id",
]

READ, USE, ADMIN = "read", "use", "admin"
SCOPES = (READ, USE, ADMIN)  # in order: each allows what the ones before it do
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}
ANY_OP = "*"

# Ops that only look. Everything not listed here or below needs `use`.
READ_OPS: Mapping[str, frozenset[str]] = {
    "status": frozenset({ANY_OP}),
    "echo": frozenset({ANY_OP}),
    "memory": frozenset({"collections", "info", "get", "list", "count", "search", "check"}),
    "session": frozenset({"history", "list"}),
    "federation": frozenset({"peers"}),
    "grid": frozenset({"status", "members", "peers"}),
    "llm": frozenset({"models"}),
    "router": frozenset({"routes"}),
    "align": frozenset({"list", "fidelity"}),
    "adapters": frozenset({"list", "show", "wait"}),
    "tuner": frozenset({"list", "log", "status"}),
    "tools": frozenset({"list"}),
}
# Ops that destroy or reconfigure.
ADMIN_OPS: Mapping[str, frozenset[str]] = {
    "memory": frozenset({"drop", "delete"}),
    "federation": frozenset({"link", "unlink"}),
    "grid": frozenset({ANY_OP}),  # but the reads above
    "models": frozenset({ANY_OP}),
    "llm": frozenset({"load", "unload"}),
    "align": frozenset({"delete", "drop", "promote", "rollback"}),  # what every app is served
    "router": frozenset({"threshold"}),  # every app's routing
    "adapters": frozenset({ANY_OP}),
    "tuner": frozenset({ANY_OP}),
}
# What each way in is called in a refusal, so the user knows what to change.
_HOW = {
    "ipc": "the data dir's ipc socket",
    "curve": "a CURVE key authorized with --scope {scope}",
    "loopback": "plain tcp on loopback",
}


def required_scope(service: str, op: Any) -> str:
    """The scope that `service`'s `op` needs (forwarded `peer/service` names: their own)."""
    service = service.rsplit("/", 1)[-1]
    reads = READ_OPS.get(service, frozenset())
    if ANY_OP in reads or op in reads:
        return READ
    admin = ADMIN_OPS.get(service, frozenset())
    if ANY_OP in admin or op in admin:
        return ADMIN
    return USE


def connection_scope(frame: zmq.Frame, loopback_admin: bool, curve: bool) -> tuple[str, str]:
    """The scope of the connection `frame` arrived on, and how it came (for messages).

    `curve`: whether the box runs a ZAP handler at all (without one no frame has a User-Id,
    and asking for it costs an exception per message).
    """
    address = frame.get("Peer-Address")
    if address.startswith("localhost:"):  # libzmq's ipc peer: localhost:uid:gid:pid
        return ADMIN, "ipc"
    if curve:
        try:
            user = frame.get("User-Id")  # set by the ZAP handler: "SCOPE KEY" (see user_id)
        except zmq.ZMQError:
            user = None
        scope = user.split(" ", 1)[0] if user else None
        if scope in _RANK:
            return scope, "curve"
    return (ADMIN if loopback_admin else USE), "loopback"


def user_id(scope: str, key: bytes) -> str:
    """What the ZAP handler names a CURVE connection: its scope, then its z85 public key
    (z85 has no spaces), so the broker knows both (the key: to drop a revoked one)."""
    return f"{scope} {key.decode()}"


def connection_key(frame: zmq.Frame) -> str | None:
    """The z85 public key a CURVE connection authenticated with; None for ipc or plain tcp."""
    try:
        user = str(frame.get("User-Id"))
    except zmq.ZMQError:
        return None
    return user.split(" ", 1)[1] if " " in user else None


def allows_every_op(scope: str, service: str) -> bool:
    """Whether `scope` allows every op of `service` (then no body needs reading)."""
    if scope == ADMIN:
        return True
    own = service.rsplit("/", 1)[-1]
    if scope == USE:
        return own not in ADMIN_OPS
    return ANY_OP in READ_OPS.get(own, ())


def floor_scope(loopback_admin: bool, curve: bool) -> str:
    """The least scope any connection can have (see connection_scope): with CURVE a key may
    be authorized for `read`; without it every way in has `use` at least."""
    if curve:
        return READ
    return ADMIN if loopback_admin else USE


def refusal(scope: str, how: str, service: str, header: bytes | memoryview) -> Forbidden | None:
    """None when `scope` allows the request; else the error that says what it needs."""
    if allows_every_op(scope, service):
        return None
    own = service.rsplit("/", 1)[-1]
    op = None
    if own in READ_OPS or own in ADMIN_OPS:
        try:  # only the op is needed; a body that does not decode is refused later anyway
            body = msgpack.unpackb(header, strict_map_key=False)
            op = body.get("op") if isinstance(body, dict) else None
        except Exception:
            op = None
    needed = required_scope(service, op)
    if _RANK[scope] >= _RANK[needed]:
        return None
    what = f"{service} {op}" if isinstance(op, str) else service
    came = _HOW[how].format(scope=scope)
    return Forbidden(
        f"{what[:300]} needs the {needed} scope; this connection ({came}) has {scope}. "
        "Use the ipc socket in the box's data dir, a CURVE key authorized with "
        f"`aether-box keys authorize FILE --scope {needed}`"
        + (", or set bus.loopback_admin = true" if how == "loopback" and needed == ADMIN else "")
    )

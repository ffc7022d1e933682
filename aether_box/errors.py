"""The box's error codes, shared by services, the broker and the client.

Every failure a user can hit is a `BoxError` with a stable `code` (it travels on the
bus as ``{"error": {"code": ..., "message": ...}}``) and a message that says what to do.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "BoxError",
    "Cancelled",
    "ConfigError",
    "CorruptModel",
    "DiskFull",
    "Forbidden",
    "NoBox",
    "NotAllowed",
    "NotFound",
    "Overloaded",
    "ProtocolError",
    "RecipeMismatch",
    "ServiceUnavailable",
    "Timeout",
    "TooLarge",
    "ToolFailed",
    "error_for_code",
]


class BoxError(Exception):
    """A failure with a stable code, reported to clients and shown to users."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_wire(self) -> dict:
        """The error as the map a FINAL reply carries."""
        return {"error": {"code": self.code, "message": self.message}}

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class BadRequest(BoxError):
    """The request's arguments are invalid."""

    code = "bad_request"


class ProtocolError(BadRequest):
    """The frames do not follow MDP/0.2 or the body does not decode."""

    code = "bad_frames"


class NotFound(BoxError):
    """A named thing (service, model, collection, op) does not exist."""

    code = "not_found"


class ServiceUnavailable(BoxError):
    """The service exists but has no worker able to answer."""

    code = "unavailable"


class NoBox(ServiceUnavailable):
    """Nothing listens at the endpoint a client was about to use: no box is running there."""


class Timeout(BoxError):
    """No reply came within the time the caller chose."""

    code = "timeout"


class TooLarge(BoxError):
    """A message or batch is over the configured limit."""

    code = "too_large"


class Overloaded(BoxError):
    """Too many requests are queued; retry later."""

    code = "overloaded"


class Cancelled(BoxError):
    """The request was cancelled before it finished."""

    code = "cancelled"


class CorruptModel(BoxError):
    """A model file is truncated or does not match its checksum."""

    code = "corrupt_model"


class AdapterPruned(BoxError):
    """The fusion log judged an adapter harmful to the base model; a request must force it."""

    code = "adapter_pruned"


class AdapterInUse(BoxError):
    """An adapter cannot be removed while requests run with it."""

    code = "adapter_in_use"


class Forbidden(BoxError):
    """The connection's access scope does not allow the op (see aether_box.bus.scopes)."""

    code = "forbidden"


class DiskFull(BoxError):
    """The disk holding the data dir is full: nothing was written."""

    code = "disk_full"


class ConfigError(BoxError):
    """The configuration or the command line is invalid."""

    code = "config"


class NotAllowed(BoxError):
    """The configuration does not allow this (a tool that is off, private data sent out)."""

    code = "not_allowed"


class ToolFailed(BoxError):
    """A tool answered with an error of its own (a worker's, an MCP server's)."""

    code = "tool_failed"


class RecipeMismatch(BadRequest):
    """A vector was made with another embedding recipe than the projector was fitted on."""

    code = "recipe_mismatch"


_BY_CODE: dict[str, type[BoxError]] = {
    cls.code: cls
    for cls in (
        BoxError,
        BadRequest,
        ProtocolError,
        NotFound,
        ServiceUnavailable,
        Timeout,
        TooLarge,
        Overloaded,
        Cancelled,
        CorruptModel,
        DiskFull,
        Forbidden,
        ConfigError,
        AdapterPruned,
        AdapterInUse,
        NotAllowed,
        ToolFailed,
        RecipeMismatch,
    )
}
# Codes of the box's own subclasses, raised as the documented class they belong to.
_BY_CODE["busy"] = Overloaded  # a model's slots and queue are full (engines.scheduler.Busy)


def error_for_code(code: str, message: str) -> BoxError:
    """Rebuild the typed exception for an error code received from the box."""
    cls = _BY_CODE.get(code)
    if cls is None:
        # Codes from services we don't know (e.g. an external worker) keep their code.
        return BoxError(message, code=code)
    return cls(message, code=code)

"""The client library local apps import: ``from aether_box.client import Client``."""

from aether_box.bus.client import AsyncClient, Client, resolve_endpoint
from aether_box.errors import (
    BadRequest,
    BoxError,
    Cancelled,
    NoBox,
    NotFound,
    Overloaded,
    ProtocolError,
    ServiceUnavailable,
    Timeout,
    TooLarge,
)

__all__ = [
    "AsyncClient",
    "BadRequest",
    "BoxError",
    "Cancelled",
    "Client",
    "NoBox",
    "NotFound",
    "Overloaded",
    "ProtocolError",
    "ServiceUnavailable",
    "Timeout",
    "TooLarge",
    "resolve_endpoint",
]

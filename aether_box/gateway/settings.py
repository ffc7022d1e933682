"""The `[http]` config section: where the gateway listens and whether it needs keys."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from aether_box.config import section
from aether_box.errors import ConfigError

__all__ = ["DEFAULT_HTTP_ADDRESS", "HttpSettings", "KEYS_FILE"]

# Taken (by another box on this machine), it moves to a free port; a chosen address never does.
DEFAULT_HTTP_ADDRESS = "127.0.0.1:7748"
KEYS_FILE = "api_keys.json"


@section("http")
@dataclass
class HttpSettings:
    """The OpenAI- and Ollama-compatible HTTP API."""

    # "host:port"; "" turns the gateway off; port 0 picks a free one. A non-loopback host
    # needs API keys (`aether-box keys api create NAME`): the box refuses to start without.
    address: str = DEFAULT_HTTP_ADDRESS
    # Require `Authorization: Bearer <key>` on loopback too (always required elsewhere).
    require_key: bool = False
    # The API keys file (hashed keys); default: <data_dir>/api_keys.json.
    keys_file: Path | None = None
    # Serve the box as an MCP server (streamable HTTP) at /mcp: memory, chat, embed.
    mcp: bool = True

    def resolve(self, data_dir: Path) -> None:
        """Check the address; fill the keys file's default path."""
        if self.address:
            self.host_and_port()
        if self.keys_file is None:
            self.keys_file = data_dir / KEYS_FILE

    def host_and_port(self) -> tuple[str, int]:
        """The address split for binding; a ConfigError says how to write it."""
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                f'http.address must be host:port (e.g. 127.0.0.1:7748), or "" to turn the '
                f"HTTP gateway off; got {self.address!r}"
            )
        return host.strip("[]"), int(port)

    @property
    def loopback(self) -> bool:
        """Whether the gateway binds a loopback address only (keys are optional there)."""
        host = self.host_and_port()[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a name or "0.0.0.0"-like wildcard: not provably loopback

"""The peers this box links to, kept in a small TOML file so links survive restarts."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import tomli_w

from aether_box.errors import BadRequest, ConfigError

__all__ = ["PeerBook", "PeerRecord", "default_name"]

# Peer names prefix forwarded services (`name/service`): keep them short and plain.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$")
DEFAULT_PORT = 7745


@dataclass(frozen=True)
class PeerRecord:
    """One link: the peer's name here, its bus endpoint, and its CURVE public key if it has one."""

    name: str
    endpoint: str
    server_key: str | None = None  # z85, 40 characters

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise BadRequest(
                f"peer name {self.name!r} must be letters, digits, '.', '_', ':' or '-' "
                "(it prefixes the services it offers, e.g. 'lab/llm')"
            )
        if urlsplit(self.endpoint).scheme not in ("tcp", "ipc"):
            raise BadRequest(
                f"peer endpoint {self.endpoint!r} must be tcp://host:port (or ipc://path)"
            )
        if self.server_key is not None and len(self.server_key) != 40:
            raise BadRequest(
                "server_key must be the peer's z85 public key (40 characters, the `public-key` "
                "line of its keys/server.key)"
            )


def default_name(endpoint: str) -> str:
    """A peer's name when the user gives none: its host, and the port unless it is 7745."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp":
        return Path(parts.path).stem or "peer"
    host = (parts.hostname or "peer").strip("[]")
    return host if parts.port in (None, DEFAULT_PORT) else f"{host}:{parts.port}"


class PeerBook:
    """Linked peers by name, read from and written to one TOML file (under `table`)."""

    def __init__(
        self, path: Path, table: str = "peers", redo: str = "link again with `aether-box link`"
    ) -> None:
        self.path = path
        self.table = table
        self.redo = redo  # what to do once the broken file is gone
        self.peers: dict[str, PeerRecord] = {}

    def load(self) -> PeerBook:
        if not self.path.exists():
            return self
        try:
            data = tomllib.loads(self.path.read_text())
            self.peers = {
                name: PeerRecord(name, **fields)
                for name, fields in data.get(self.table, {}).items()
            }
        except (tomllib.TOMLDecodeError, TypeError, BadRequest) as exc:
            raise ConfigError(
                f"{self.path} is not a valid {self.table} file ({exc}); fix it, or delete it "
                f"and {self.redo}"
            ) from exc
        return self

    def save(self) -> None:
        """Write the file whole, then swap it in: a crash leaves the old one or the new one."""
        peers = {
            name: {k: v for k, v in asdict(record).items() if k != "name" and v is not None}
            for name, record in sorted(self.peers.items())
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".toml.partial")
        partial.write_text(tomli_w.dumps({self.table: peers}))
        os.replace(partial, self.path)

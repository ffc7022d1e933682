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
MAX_ENDPOINT_CHARS = 512
# sockaddr_un holds 108 bytes with the final NUL: a longer ipc path can never be connected.
MAX_IPC_PATH_BYTES = 107


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
        _check_endpoint(self.endpoint)
        if self.server_key is not None and len(self.server_key) != 40:
            raise BadRequest(
                "server_key must be the peer's z85 public key (40 characters, the `public-key` "
                "line of its keys/server.key)"
            )


def _check_endpoint(endpoint: str) -> None:
    """BadRequest unless `endpoint` is one this box could connect to: saved, it is tried forever."""
    shown = repr(endpoint[:80] + ("..." if len(endpoint) > 80 else ""))
    usage = "must be tcp://host:port (or ipc://path)"
    if len(endpoint) > MAX_ENDPOINT_CHARS:
        raise BadRequest(
            f"peer endpoint {shown} is over {MAX_ENDPOINT_CHARS} characters; it {usage}"
        )
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        raise BadRequest(f"peer endpoint {shown} {usage}") from None
    if parts.scheme == "tcp" and parts.hostname and port:
        return
    if parts.scheme == "ipc":
        path = endpoint[len("ipc://") :]
        if path and len(path.encode()) <= MAX_IPC_PATH_BYTES:
            return
        raise BadRequest(
            f"peer endpoint {shown}: an ipc path has 1 to {MAX_IPC_PATH_BYTES} bytes "
            f"(a socket's limit), this one {len(path.encode())}"
        )
    raise BadRequest(f"peer endpoint {shown} {usage}")


def default_name(endpoint: str) -> str:
    """A peer's name when the user gives none: its host, and the port unless it is 7745."""
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:  # not an endpoint at all: PeerRecord says what is wrong with it
        return "peer"
    if parts.scheme != "tcp":
        return Path(parts.path).stem[:63] or "peer"
    host = (parts.hostname or "peer").strip("[]")[:56]
    return host if port in (None, DEFAULT_PORT) else f"{host}:{port}"


class PeerBook:
    """Linked peers by name, read from and written to one TOML file (under `table`)."""

    def __init__(
        self, path: Path, table: str = "peers", redo: str = "link again with `aether-box link`"
    ) -> None:
        self.path = path
        self.table = table
        self.redo = redo  # what to do once the broken file is gone
        self.peers: dict[str, PeerRecord] = {}
        # Saved links that cannot be used (an older version's, or edited by hand), and why:
        # reported and skipped, never a reason to stop the component.
        self.invalid: dict[str, str] = {}

    def load(self) -> PeerBook:
        if not self.path.exists():
            return self
        try:
            data = tomllib.loads(self.path.read_text("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # a hand edit, a bad copy
            raise ConfigError(
                f"{self.path} is not a valid {self.table} file ({exc}); fix it, or delete it "
                f"and {self.redo}"
            ) from exc
        peers = data.get(self.table, {})
        for name, fields in peers.items() if isinstance(peers, dict) else ():
            try:
                if not isinstance(fields, dict):
                    raise TypeError("not a table")
                self.peers[name] = PeerRecord(name, **fields)
            except (TypeError, BadRequest) as exc:
                self.invalid[str(name)] = f"skipped: {exc}; {self.redo}"
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

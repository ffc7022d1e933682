"""CURVE keys: the box's own keypair, a local client keypair, and the allowed-clients list.

Layout in the data dir::

    keys/server.key, keys/server.key_secret     the box's keypair (zmq.auth certificate files)
    keys/client.key, keys/client.key_secret     a keypair for local tools (CLI, TUI)
    keys/authorized/*.key                       public keys allowed to connect over tcp
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth

from aether_box.bus.settings import DEFAULT_TCP_ENDPOINTS
from aether_box.errors import ConfigError

__all__ = [
    "AllowList",
    "CurveKeys",
    "bind_all",
    "configure_curve_client",
    "init_keys",
    "is_loopback",
    "keys_dir",
    "uses_curve",
]

log = logging.getLogger(__name__)

KEYS_DIR = "keys"
AUTHORIZED_DIR = "authorized"


@dataclass(frozen=True)
class CurveKeys:
    """One CURVE keypair (z85-encoded bytes)."""

    public: bytes
    secret: bytes

    @classmethod
    def load(cls, secret_file: Path) -> CurveKeys:
        public, secret = zmq.auth.load_certificate(secret_file)
        if secret is None:
            raise ConfigError(
                f"{secret_file} holds no secret key; run `aether-box keys init --force`"
            )
        return cls(public, secret)


def keys_dir(data_dir: Path) -> Path:
    return data_dir / KEYS_DIR


class AllowList:
    """The public keys the bus admits over CURVE: keys/authorized/*.key, changeable while
    the box runs (the grid admits its members and revokes them).

    ZAP asks `allowed` at each CURVE handshake. A revoked key is refused from then on, and
    `revoked` tells the broker to drop messages from connections admitted before (see
    Broker), so a revoked member is cut off at once, not at its next reconnect.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: set[bytes] = set()  # z85 public keys
        self.revoked: set[str] = set()  # z85, as ZAP reports the sender ("User-Id")

    def load(self) -> AllowList:
        """Read every key file in the directory (blocking: call it in a worker thread)."""
        self.keys = {_public_key(f) for f in sorted(self.directory.glob("*.key"))}
        self.revoked -= {key.decode() for key in self.keys}  # a key put back is admitted again
        return self

    async def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question (zmq.auth credentials provider): is `key` (z85) admitted?

        An unknown key has the directory read again first (in a worker thread), so a key
        file copied there while the box runs admits its client at once. (A refused client
        is not retried by ZeroMQ: it must connect again, so the read cannot wait for later.)
        """
        if key not in self.keys:
            import anyio.to_thread

            await anyio.to_thread.run_sync(self.load)
        return key in self.keys

    def admit(self, name: str, public: str) -> Path:
        """Admit `public` (z85) now and across restarts, in keys/authorized/NAME.key (blocking)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.key"
        partial = path.with_suffix(".key.partial")
        partial.write_text(
            "#   ZeroMQ CURVE Public Certificate\n"
            f"#   written by aether-box for {name}\n\nmetadata\ncurve\n"
            f'    public-key = "{public}"\n'
        )
        partial.replace(path)
        self.keys.add(public.encode())
        self.revoked.discard(public)
        return path

    def remove(self, file_name: str) -> None:
        """Delete keys/authorized/FILE_NAME and read the directory again (blocking)."""
        (self.directory / file_name).unlink(missing_ok=True)
        self.load()

    def revoke(self, public: str) -> list[Path]:
        """Refuse `public` from now on: forget it and delete every key file that holds it
        (blocking). Returns the files deleted."""
        self.keys.discard(public.encode())
        self.revoked.add(public)
        deleted = []
        for path in self.directory.glob("*.key"):
            try:
                if _public_key(path) == public.encode():
                    path.unlink()
                    deleted.append(path)
            except ConfigError:
                continue  # not a key file: not ours to judge here
        return deleted


def _public_key(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a public key file ({exc}); remove it") from exc
    return public


def init_keys(data_dir: Path, *, force: bool = False) -> Path:
    """Create the box keypair, a local client keypair, and authorise that client."""
    root = keys_dir(data_dir)
    if (root / "server.key_secret").exists() and not force:
        raise ConfigError(f"keys already exist in {root}; pass --force to replace them")
    if force and root.exists():
        shutil.rmtree(root)
    (root / AUTHORIZED_DIR).mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    zmq.auth.create_certificates(root, "server")
    client_public, _ = zmq.auth.create_certificates(root, "client")
    shutil.copy(client_public, root / AUTHORIZED_DIR / "client.key")
    return root


def server_keys(data_dir: Path) -> CurveKeys | None:
    """The box keypair, if `keys init` has made one."""
    secret = keys_dir(data_dir) / "server.key_secret"
    return CurveKeys.load(secret) if secret.exists() else None


def client_keys(data_dir: Path) -> tuple[CurveKeys, bytes] | None:
    """The local client keypair and the box's public key, if both exist."""
    root = keys_dir(data_dir)
    if not (root / "client.key_secret").exists() or not (root / "server.key").exists():
        return None
    server_public, _ = zmq.auth.load_certificate(root / "server.key")
    return CurveKeys.load(root / "client.key_secret"), server_public


def is_loopback(endpoint: str) -> bool:
    """True for ipc/inproc endpoints and tcp on a loopback address."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or "*": not provably loopback


def plan_curve(data_dir: Path, mode: str, endpoints: list[str]) -> CurveKeys | None:
    """Decide whether tcp endpoints use CURVE; refuse exposed endpoints without keys."""
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"bus.curve must be 'auto', 'on' or 'off', got {mode!r}")
    keys = server_keys(data_dir) if mode != "off" else None
    if mode == "on" and keys is None:
        raise ConfigError(
            f"bus.curve is 'on' but {keys_dir(data_dir)} has no keys; run `aether-box keys init`"
        )
    exposed = [e for e in endpoints if not is_loopback(e)]
    if exposed and keys is None:
        raise ConfigError(
            f"refusing to bind {', '.join(exposed)} without CURVE encryption: anyone on the network "
            "could use the box. Run `aether-box keys init` to make keys (then add the public keys "
            f"of allowed clients to {keys_dir(data_dir) / AUTHORIZED_DIR}), or bind 127.0.0.1 only."
        )
    return keys


def uses_curve(endpoint: str, keys: CurveKeys | None, on_loopback: bool) -> bool:
    """Whether the box serves `endpoint` with CURVE: tcp, keys, and not loopback unless asked."""
    if keys is None or not endpoint.startswith("tcp"):
        return False
    return on_loopback or not is_loopback(endpoint)


def bind_all(
    socket: zmq.Socket, endpoints: list[str], keys: CurveKeys | None, *, curve_loopback: bool
) -> list[str]:
    """Bind ipc endpoints plain (file permissions guard them), then tcp ones, with CURVE where
    `uses_curve` says; a taken default port moves to a free one (see bus/settings.py)."""
    bound = []
    for endpoint in sorted(endpoints, key=lambda e: not e.startswith(("ipc", "inproc"))):
        # Security options apply to binds made after they are set.
        curve = uses_curve(endpoint, keys, curve_loopback)
        if curve:
            socket.curve_secretkey = keys.secret
            socket.curve_publickey = keys.public
        socket.curve_server = curve
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            if exc.errno != errno.EADDRINUSE or endpoint not in DEFAULT_TCP_ENDPOINTS:
                raise ConfigError(
                    f"cannot listen on {endpoint}: {exc.strerror}. Is another box running? "
                    "Stop it, or choose other endpoints with --bind or bus.endpoints."
                ) from exc
            socket.bind(endpoint.rsplit(":", 1)[0] + ":*")
            log.warning(
                "%s is taken (another box?); listening on %s instead (clients of this data "
                "dir find it by themselves)",
                endpoint,
                socket.last_endpoint.decode(),
            )
        bound.append(socket.last_endpoint.decode())
    return bound


def configure_curve_client(socket: zmq.Socket, keys: CurveKeys, server_public: bytes) -> None:
    """Make the socket's next connect a CURVE client of the box with `server_public`."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = server_public

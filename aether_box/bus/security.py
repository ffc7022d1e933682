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
import os
import re
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
    "scopes_in",
    "write_authorized",
    "CurveKeys",
    "bind_all",
    "configure_curve_client",
    "authorize_key",
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
        public, secret = load_key_file(secret_file)
        if secret is None:
            raise ConfigError(
                f"{secret_file} holds no secret key; run `aether-box keys init --force`"
            )
        return cls(public, secret)


def load_key_file(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a ZeroMQ certificate file; a file that is not one (a bad
    copy, a hand edit) is a ConfigError naming it, not zmq's ValueError from deep inside."""
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError too
        raise ConfigError(
            f"{path} is not a readable CURVE key file ({exc}); put back the file from a "
            "backup, or make new keys with `aether-box keys init --force` (remote clients "
            "then need the new keys/server.key)"
        ) from exc


def keys_dir(data_dir: Path) -> Path:
    return data_dir / KEYS_DIR


class AllowList:
    """The public keys the bus admits over CURVE, with their scopes: keys/authorized/*.key,
    changeable while the box runs (the grid admits its members and revokes them).

    ZAP asks `callback` at each CURVE handshake. A revoked key is refused from then on, and
    `revoked` tells the broker to drop messages from connections admitted before (see
    Broker), so a revoked member is cut off at once, not at its next reconnect.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.scopes: dict[bytes, str] = {}  # z85 public key -> its scope
        self.revoked: set[str] = set()  # z85 keys whose connections the broker drops
        self.skipped: set[Path] = set()  # files there that hold no key (warned about once)

    @property
    def keys(self) -> set[bytes]:
        return set(self.scopes)

    def load(self) -> AllowList:
        """Read every key file in the directory (blocking: call it in a worker thread)."""
        self.scopes = scopes_in(self.directory, self.skipped)
        self.revoked -= {key.decode() for key in self.scopes}  # a key put back is admitted
        return self

    async def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question (zmq.auth credentials provider): is `key` (z85) admitted?

        An unknown key has the directory read again first (in a worker thread), so a key
        file copied there while the box runs admits its client at once. (A refused client
        is not retried by ZeroMQ: it must connect again, so the read cannot wait for later.)
        """
        if key not in self.scopes:
            import anyio.to_thread

            await anyio.to_thread.run_sync(self.load)
        return key in self.scopes

    def admit(self, name: str, public: str, scope: str) -> Path:
        """Admit `public` (z85) with `scope` now and across restarts, as
        keys/authorized/NAME.key (blocking)."""
        path = write_authorized(self.directory / f"{name}.key", public, scope, "aether-box grid")
        self.scopes[public.encode()] = scope
        self.revoked.discard(public)
        return path

    def remove(self, file_name: str) -> None:
        """Delete keys/authorized/FILE_NAME and read the directory again (blocking)."""
        (self.directory / file_name).unlink(missing_ok=True)
        self.load()

    def revoke(self, public: str) -> list[Path]:
        """Refuse `public` from now on: forget it and delete every key file that holds it
        (blocking). Returns the files deleted."""
        self.scopes.pop(public.encode(), None)
        self.revoked.add(public)
        deleted = []
        for path in self.directory.glob("*.key"):
            try:
                held, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError):
                continue  # not a key file: not ours to judge here
            if held == public.encode():
                path.unlink()
                deleted.append(path)
        return deleted


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
    client_public, client_secret = zmq.auth.create_certificates(root, "client")
    # pyzmq writes them with the umask's mode: secrets are the user's alone, whatever it was.
    for secret in (root / "server.key_secret", Path(client_secret)):
        secret.chmod(0o600)
    # The data dir's own CLI and dashboard: admin. (pyzmq puts metadata in the secret file
    # only, so a copy of the public file would carry no scope and count as `use`.)
    public, _ = zmq.auth.load_certificate(client_public)
    write_authorized(root / AUTHORIZED_DIR / "client.key", public.decode(), "admin", "keys init")
    return root


def authorize_key(data_dir: Path, key_file: Path, scope: str, name: str | None = None) -> Path:
    """Allow the CURVE public key in `key_file` (a zmq certificate) with `scope`."""
    from aether_box.bus.scopes import SCOPES

    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
    try:
        public, _ = zmq.auth.load_certificate(key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{key_file} is not a CURVE public key file ({exc}); give the peer's .key file "
            "(made by `aether-box keys init` there: keys/client.key or keys/server.key)"
        ) from exc
    name = name or key_file.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ConfigError(f"key name {name!r}: letters, digits, '.', '_' or '-'; use --name")
    target = keys_dir(data_dir) / AUTHORIZED_DIR / f"{name}.key"
    return write_authorized(target, public.decode(), scope, "aether-box keys authorize")


def write_authorized(target: Path, public: str, scope: str, by: str) -> Path:
    """Write an authorized key file (z85 `public`, its `scope`), whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".key.partial")
    tmp.write_text(
        f'# authorized by {by}\nmetadata\n    scope = "{scope}"\n'
        f'curve\n    public-key = "{public}"\n'
    )
    os.replace(tmp, target)
    return target


def scopes_in(directory: Path, skipped: set[Path] | None = None) -> dict[bytes, str]:
    """Each authorized public key (z85) in `directory` and its scope; a key file without
    one is `use`; a file that is no key file is skipped, with a warning the first time it
    is added to `skipped` (the directory is read again at each unknown client)."""
    skipped = set() if skipped is None else skipped
    found: dict[bytes, str] = {}
    for path in sorted(directory.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
            match = _SCOPE_LINE.search(path.read_text())
        except (OSError, ValueError) as exc:
            # Skipped, not fatal: one bad file must not lock out every other client.
            if path not in skipped:
                skipped.add(path)
                log.warning(
                    "skipping %s: not a CURVE public key file (%s); its client is refused "
                    "until it holds the client's public key again",
                    path,
                    exc,
                )
            continue
        found[public] = match.group(1) if match else "use"
    return found


_SCOPE_LINE = re.compile(r'^\s+scope\s*=\s*"(read|use|admin)"', re.MULTILINE)


def server_keys(data_dir: Path) -> CurveKeys | None:
    """The box keypair, if `keys init` has made one."""
    secret = keys_dir(data_dir) / "server.key_secret"
    return CurveKeys.load(secret) if secret.exists() else None


def client_keys(data_dir: Path) -> tuple[CurveKeys, bytes] | None:
    """The local client keypair and the box's public key, if both exist."""
    root = keys_dir(data_dir)
    if not (root / "client.key_secret").exists() or not (root / "server.key").exists():
        return None
    server_public, _ = load_key_file(root / "server.key")
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
    socket: zmq.Socket,
    endpoints: list[str],
    keys: CurveKeys | None,
    *,
    curve_loopback: bool,
    option: str = "--bind or bus.endpoints",
) -> list[str]:
    """Bind ipc endpoints plain (file permissions guard them), then tcp ones, with CURVE where
    `uses_curve` says; a taken default port moves to a free one (see bus/settings.py).
    `option`: where the user chooses these endpoints, for the error when one is taken."""
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
                    f"Stop it, or choose other endpoints with {option}."
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

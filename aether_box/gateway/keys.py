"""API keys for the HTTP gateway: made by `aether-box keys api create`, stored hashed.

The file (``http.keys_file``, default ``<data_dir>/api_keys.json``, mode 0600) holds, per key,
its name, the sha256 of the key, the models and services it may use (absent: all) and when it
was made and revoked. The key itself is shown once, when it is made, and never stored: a
leaked file gives no key. Revoked keys stay listed (with the time) so `list` tells the story.

The functions here read and write files: the box calls them in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aether_box.errors import BadRequest, ConfigError, NotFound

__all__ = ["ApiKey", "KeyRing", "create_key", "digest", "load_keys", "revoke_key"]

PREFIX = "abx-"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def digest(key: str) -> str:
    """The sha256 of a key, as stored."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One key's record (never the key itself)."""

    name: str
    sha256: str
    created: str
    models: tuple[str, ...] | None = None  # None: every model
    services: tuple[str, ...] | None = None  # None: every service
    revoked: str | None = None

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def allows_service(self, service: str) -> bool:
        return self.services is None or service in self.services

    def public(self) -> dict[str, Any]:
        """What `list` shows: everything but the hash."""
        shown = asdict(self)
        del shown["sha256"]
        return shown


_REDO_KEYS = (
    "fix it, or move it away and create the keys again with `aether-box keys api create NAME`"
)


def load_keys(path: Path) -> list[ApiKey]:
    """Every key record in `path` (none when the file does not exist)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # repr would quote every garbage byte
        raise ConfigError(f"{path} is not a valid API keys file ({exc}); {_REDO_KEYS}") from exc
    try:
        records = json.loads(text)["keys"]
        return [
            ApiKey(
                name=r["name"],
                sha256=r["sha256"],
                created=r["created"],
                models=None if r.get("models") is None else tuple(r["models"]),
                services=None if r.get("services") is None else tuple(r["services"]),
                revoked=r.get("revoked"),
            )
            for r in records
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a valid API keys file ({exc!r}); {_REDO_KEYS}") from exc


def create_key(
    path: Path,
    name: str,
    models: Iterable[str] | None = None,
    services: Iterable[str] | None = None,
) -> tuple[ApiKey, str]:
    """Make a key called `name`; returns its record and the key (shown once, never stored)."""
    if not NAME.match(name):
        raise BadRequest(
            f"key name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    keys = load_keys(path)
    if any(k.name == name and k.revoked is None for k in keys):
        raise BadRequest(f"an API key called {name!r} exists; revoke it first or pick another name")
    secret = PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        name=name,
        sha256=digest(secret),
        created=_now(),
        models=None if not models else tuple(models),
        services=None if not services else tuple(services),
    )
    _write(path, [*keys, record])
    return record, secret


def revoke_key(path: Path, name: str) -> ApiKey:
    """Revoke the live key called `name`; it fails with 401 once the box has re-read the file."""
    keys = load_keys(path)
    for i, key in enumerate(keys):
        if key.name == name and key.revoked is None:
            keys[i] = revoked = ApiKey(**{**asdict(key), "revoked": _now()})
            _write(path, keys)
            return revoked
    live = sorted(k.name for k in keys if k.revoked is None)
    raise NotFound(f"no live API key called {name!r}; live keys: {live}")


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of the keys file, None when absent: how the box notices a change."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


class KeyRing:
    """The live keys, by hash, as the box checks them on each request (no file I/O here)."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self.replace(keys)

    def replace(self, keys: Iterable[ApiKey]) -> None:
        records = list(keys)
        self.names = [k.name for k in records if k.revoked is None]
        self._by_hash = {k.sha256: k for k in records if k.revoked is None}

    def __len__(self) -> int:
        return len(self._by_hash)

    def check(self, key: str) -> ApiKey | None:
        """The live key's record, or None for an unknown or revoked key."""
        return self._by_hash.get(digest(key))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write(path: Path, keys: list[ApiKey]) -> None:
    """Replace the file atomically, readable by its owner only (0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(key).items()}
        for key in keys
    ]
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump({"keys": records}, file, indent=2)
        file.flush()
        os.fsync(file.fileno())
    os.chmod(tmp, 0o600)  # an older tmp file may have had other bits
    os.replace(tmp, path)

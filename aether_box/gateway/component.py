"""The `http` component: Hypercorn serving the gateway's app inside the box's task group.

No second process and no second event loop: Hypercorn's asyncio server runs as one more
task of the box, and stops through its `shutdown_trigger` when the box stops (after the
broker has drained or cancelled the bus calls of requests in flight), so SIGINT/SIGTERM
keep their graceful behaviour. The listening socket is made here, so that a taken default
port can move to a free one (as metrics do) and `status` can show the real URL.

Keys: the file is read in a worker thread at start, then whenever it changes (looked at
every KEYS_POLL_S) or when `aether-box keys api revoke` asks through the bus (the `http`
service's op ``reload_keys``), so a revoked key fails at once.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any, ClassVar

import anyio
import anyio.abc

from aether_box.bus.service import Request
from aether_box.context import BoxContext
from aether_box.errors import ConfigError, NotFound
from aether_box.gateway.keys import KeyRing, file_stamp, load_keys
from aether_box.gateway.settings import DEFAULT_HTTP_ADDRESS, HttpSettings

__all__ = ["HttpComponent"]

log = logging.getLogger(__name__)

KEYS_POLL_S = 1.0
# How long requests in flight get to finish once the box stops (their bus calls are over).
GRACE_S = 1.0
BACKLOG = 128
# Apps (editors, chat front-ends) send requests seconds to minutes apart; a connection kept
# that long spares each a new handshake (Hypercorn's default is 5 s).
KEEP_ALIVE_S = 75.0


class HttpComponent:
    """Serves the OpenAI and Ollama APIs at `http.address`; see the module docstring."""

    name: ClassVar[str] = "http"
    settings_class: ClassVar[type | None] = HttpSettings

    def __init__(self, ctx: BoxContext) -> None:
        self.settings = ctx.config.get(HttpSettings)
        self.address: str | None = None  # what it is bound to, once serving
        self.keyring = KeyRing()
        self.require_key = False
        self.gateway: Any = None
        self._stamp: tuple[int, int] | None = None

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        settings = self.settings
        if not settings.address:
            task_status.started()
            return
        # Imported here: `aether-box status` and the CLI never pay for Starlette/Hypercorn.
        from hypercorn.asyncio import serve
        from hypercorn.config import Config as HypercornConfig

        from aether_box.gateway.app import Gateway

        await self._reload_keys()
        self.require_key = settings.require_key or not settings.loopback
        if self.require_key and not len(self.keyring):
            why = (
                f"http.address {settings.address!r} is not a loopback address"
                if not settings.loopback
                else "http.require_key is on"
            )
            raise ConfigError(
                f"{why}, so the HTTP gateway needs API keys, and {settings.keys_file} has no "
                "live key: create one with `aether-box keys api create NAME`, or bind "
                '127.0.0.1, or set http.address="" to turn the gateway off'
            )
        sock = _listen(settings)
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        mcp_app, mcp_sessions = None, None
        if settings.mcp:
            from aether_box.tools import mcp_server

            # The mcp SDK's first import reads files (pydantic, zoneinfo): off the loop.
            await anyio.to_thread.run_sync(mcp_server.import_sdk)
            mcp_app, mcp_sessions = mcp_server.http_endpoint(ctx.call, str(host))
        self.gateway = Gateway(ctx, self.keyring, require_key=self.require_key, mcp_app=mcp_app)

        config = HypercornConfig()
        config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns (and closes) the socket now
        config.accesslog = None  # requests are counted per route and key, not logged
        config.errorlog = logging.getLogger("aether_box.gateway.hypercorn")
        config.graceful_timeout = GRACE_S
        config.keep_alive_timeout = KEEP_ALIVE_S
        stop = anyio.Event()
        ctx.add_service("http", self._handle)
        log.info(
            "HTTP gateway on http://%s (API keys %s)",
            self.address,
            "required" if self.require_key else "optional",
        )
        async with anyio.create_task_group() as tg:
            if mcp_sessions is not None:
                await tg.start(_run_mcp_sessions, mcp_sessions)
            # Shielded, so that a box stop runs Hypercorn's own graceful shutdown (through
            # `stop`) rather than cancelling it mid-way; the deadline set below bounds it.
            server_scope = anyio.CancelScope(shield=True)

            async def run_server() -> None:
                with server_scope:
                    await serve(self.gateway.app, config, shutdown_trigger=stop.wait)

            tg.start_soon(run_server)
            tg.start_soon(self._watch_keys)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()
                server_scope.deadline = anyio.current_time() + GRACE_S + 1.0
                self.address = None

    def status_section(self) -> dict[str, Any] | None:
        """The "http" section of `status`: the URL, keys, and counts per route and key name."""
        if self.address is None or self.gateway is None:
            return None
        return {
            "url": f"http://{self.address}",
            "require_key": self.require_key,
            "live_keys": len(self.keyring),
            **self.gateway.stats.snapshot(),
        }

    async def _handle(self, request: Request) -> dict[str, Any]:
        """The `http` bus service: op ``reload_keys`` (what `keys api revoke` calls)."""
        op = request.body.get("op")
        if op == "reload_keys":
            await self._reload_keys(force=True)
            return {"keys": len(self.keyring)}
        raise NotFound(f"http has no op {op!r}; ops: ['reload_keys']")

    async def _reload_keys(self, *, force: bool = False) -> None:
        path = self.settings.keys_file
        assert path is not None
        stamp = await anyio.to_thread.run_sync(file_stamp, path)
        if stamp == self._stamp and not force:
            return
        # Noted first: a broken file is reported once per change, not at every look.
        self._stamp = stamp
        keys = await anyio.to_thread.run_sync(load_keys, path)
        self.keyring.replace(keys)

    async def _watch_keys(self) -> None:
        while True:
            await anyio.sleep(KEYS_POLL_S)
            try:
                await self._reload_keys()
            except ConfigError as exc:  # a broken file: keep the keys we have, say why
                log.warning("API keys not reloaded: %s", exc)


async def _run_mcp_sessions(
    sessions: Any, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run the MCP endpoint's session manager (its sessions' tasks live in it)."""
    async with sessions.run():
        task_status.started()
        await anyio.sleep_forever()


def _listen(settings: HttpSettings) -> socket.socket:
    """A listening socket at `http.address`; the default port, if taken, moves to a free one."""
    host, port = settings.host_and_port()
    ports = [port, 0] if settings.address == DEFAULT_HTTP_ADDRESS else [port]
    for i, candidate in enumerate(ports):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, candidate))
            sock.listen(BACKLOG)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and i + 1 < len(ports):
                log.warning("HTTP port %d is taken (another box?); picking a free one", port)
                continue
            raise ConfigError(
                f"cannot listen on http.address {settings.address!r} ({exc.strerror}); set "
                'it to a free host:port, or "" to turn the HTTP gateway off'
            ) from exc
    raise AssertionError("unreachable")

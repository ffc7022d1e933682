"""The box: one process, one anyio task group, every component inside it.

Start order: data-dir lock, CURVE plan, events, broker, then each component the plugin
registry lists (aether_box.plugins), each built with its own BoxContext (aether_box.context)
and served under a Supervisor that restarts it if it fails later.
On SIGINT/SIGTERM (or `stop()`), new requests are refused,
in-flight ones get `bus.shutdown_grace_s` to finish, and whatever is left is cancelled.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import zmq
import zmq.asyncio
from zmq.utils import z85

from aether_box.bus.broker import Broker
from aether_box.bus.discovery import clear_endpoints, write_endpoints
from aether_box.bus.events import EventLogHandler, Events
from aether_box.bus.failures import is_disk_full
from aether_box.bus.scopes import USE, user_id
from aether_box.bus.security import (
    AUTHORIZED_DIR,
    AllowList,
    keys_dir,
    plan_curve,
    uses_curve,
)
from aether_box.bus.settings import BusSettings
from aether_box.config import Config, unusable_data_dir
from aether_box.context import BoxContext, BoxView
from aether_box.contract import Component, ComponentFactory
from aether_box.errors import BoxError, ConfigError
from aether_box.monitor.supervisor import Supervisor
from aether_box.plugins import LOAD_ENV, where_defined
from aether_box.private import make_private

__all__ = ["Box", "load_components", "running_pid"]

log = logging.getLogger(__name__)
LOCK_FILE = "box.lock"
SOCKET_FILES = ("bus.sock", "events.sock")
# A component still starting after this long gets a warning that names it (it may hang).
SLOW_START_S = 15.0
T = TypeVar("T")


def load_components() -> list[ComponentFactory]:
    """Every registered component class, in start order (see aether_box.plugins)."""
    from aether_box.plugins import registry

    return registry().components()


class Box:
    """Composes the bus and the components, and owns their lifecycle."""

    def __init__(self, config: Config, components: list[ComponentFactory] | None = None) -> None:
        """`components`: the component classes to run (default: the registry's)."""
        self.config = config
        self._component_classes = components
        self.settings = config.get(BusSettings)
        self.context: zmq.asyncio.Context
        self._components: list[Component] = []
        self.supervisors: dict[str, Supervisor] = {}
        self.events: Events
        self.broker: Broker
        self.allow_list: AllowList | None = None  # the CURVE keys admitted, when CURVE is on
        self._stop: anyio.Event | None = None
        self._starting: anyio.CancelScope | None = None  # cancelled by a stop while starting
        self.ready = False  # True once every component has started
        self._stop_requested = False

    def get(self, interface: type[T]) -> T | None:
        """The running component that implements `interface` (a class or Protocol), if any."""
        return next((c for c in self._components if isinstance(c, interface)), None)

    def _supervision(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"restarts": s.restarts, "services": sorted(s.services)}
            for name, s in self.supervisors.items()
        }

    def stop(self) -> None:
        """Begin a graceful shutdown (idempotent); call it from the box's event loop."""
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()
        if self._starting is not None and not self.ready:
            self._starting.cancel()  # a component that never starts must not keep the box up

    async def run(
        self, *, handle_signals: bool = True, on_ready: Callable[[Box], None] | None = None
    ) -> None:
        """Serve until stopped; raises ConfigError if the box cannot start."""
        self._stop = anyio.Event()
        if self._stop_requested:
            self._stop.set()
        data_dir = self.config.data_dir
        if not self.settings.endpoints:  # it would run, and no client could ever reach it
            raise ConfigError(
                "bus.endpoints is empty: the box would listen nowhere; list at least one, "
                'e.g. bus.endpoints = ["ipc://{data_dir}/bus.sock"]'
            )
        # The data dir, its lock and the keys are files: opened in a worker thread.
        lock = await anyio.to_thread.run_sync(_lock_data_dir, data_dir)
        try:
            await self._run_locked(handle_signals, on_ready)
        finally:
            with anyio.CancelScope(shield=True):  # the lock must go even when cancelled
                await anyio.to_thread.run_sync(_unlock_data_dir, lock)

    async def _run_locked(
        self, handle_signals: bool, on_ready: Callable[[Box], None] | None
    ) -> None:
        data_dir = self.config.data_dir
        with ExitStack() as stack:
            self.context = zmq.asyncio.Context()
            # Registered first so it runs last: closes every socket, then ends the context.
            stack.callback(self.context.destroy, linger=0)
            curve = await anyio.to_thread.run_sync(
                plan_curve,
                data_dir,
                self.settings.curve,
                self.settings.endpoints + self.settings.event_endpoints,
            )
            if curve is not None:
                self.allow_list = await anyio.to_thread.run_sync(
                    AllowList(keys_dir(data_dir) / AUTHORIZED_DIR).load
                )
                authenticator = _start_authenticator(self.context, self.allow_list)
                stack.callback(authenticator.stop)
            self.events = Events(
                self.context,
                self.settings.event_endpoints,
                curve,
                curve_loopback=self.settings.curve_on_loopback,
            )
            stack.callback(self.events.close)
            self.broker = Broker(self.settings, self.context, curve)
            if self.allow_list is not None:
                self.broker.refused = self.allow_list.revoked
            log_handler = EventLogHandler(self.events)
            logging.getLogger().addHandler(log_handler)
            stack.callback(logging.getLogger().removeHandler, log_handler)
            try:
                await self._serve(handle_signals, on_ready)
            except BaseExceptionGroup as group:
                # A component that cannot start raises one BoxError: show that, not a group.
                errors = _leaves(group)
                if len(errors) == 1 and isinstance(errors[0], BoxError):
                    raise errors[0] from None
                raise

    async def _serve(self, handle_signals: bool, on_ready: Callable[[Box], None] | None) -> None:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(self._watch_signals)
            await tg.start(self.broker.serve)
            with anyio.CancelScope() as self._starting:
                if self._stop_requested:
                    self._starting.cancel()
                await self._start_components(tg, on_ready)
            if not self.ready:
                log.info("stopped while starting: not every component had started")
            else:
                assert self._stop is not None
                await self._stop.wait()
            log.info("shutting down: finishing %d in-flight request(s)", self.broker.in_flight)
            self.events.publish("status.stopping", {"in_flight": self.broker.in_flight})
            self.broker.stop_accepting()
            await anyio.sleep(0.1)  # the PUB socket closes with linger 0: let subscribers hear it
            if not await self.broker.drain(self.settings.shutdown_grace_s):
                log.warning(
                    "cancelling %d request(s) still running after %.1f s",
                    self.broker.in_flight,
                    self.settings.shutdown_grace_s,
                )
                await self.broker.abandon_in_flight()
            await anyio.to_thread.run_sync(clear_endpoints, self.config.data_dir)
            tg.cancel_scope.cancel()

    async def _start_components(
        self, tg: anyio.abc.TaskGroup, on_ready: Callable[[Box], None] | None
    ) -> None:
        """Build and start each component in order, then publish the endpoints."""
        view = BoxView(
            self.broker,
            self.events,
            lambda: self._components,
            self._supervision,
            lambda: self.ready,
            self.allow_list,
        )
        for cls in self._component_classes or load_components():
            ctx = BoxContext(self.config, view, getattr(cls, "name", cls.__name__))
            with _start_failures(cls):
                component = cls(ctx)
            if not isinstance(getattr(component, "name", None), str) or not callable(
                getattr(component, "serve", None)
            ):
                raise ConfigError(
                    f"{where_defined(cls)} is not a component: it needs a `name` (a text) and "
                    "`async serve(ctx, *, task_status)` (see aether_box/contract.py)"
                )
            if component.name in self.supervisors:
                raise ConfigError(
                    f"two components are called {component.name!r}; a plugin must "
                    f"choose another name (or leave it out with {LOAD_ENV})"
                )
            self._components.append(component)
            supervisor = Supervisor(ctx, self.broker, component)
            self.supervisors[component.name] = supervisor
            watch = anyio.CancelScope()
            tg.start_soon(_warn_if_slow, watch, component.name)
            try:
                with _start_failures(cls):
                    await tg.start(supervisor.run)
            finally:
                watch.cancel()
        await self._publish_endpoints()
        self.broker.starting = False  # an unknown service is now truly unknown
        self.ready = True
        log.info("box ready on %s (pid %d)", ", ".join(self.broker.bound), os.getpid())
        self.events.publish("status.ready", {"endpoints": self.broker.bound})
        if on_ready is not None:
            on_ready(self)

    async def _publish_endpoints(self) -> None:
        """Tell this data dir's clients where the box listens (and where CURVE is on)."""
        curve = self.broker.curve
        on_loopback = self.settings.curve_on_loopback
        try:
            await anyio.to_thread.run_sync(
                lambda: write_endpoints(
                    self.config.data_dir,
                    bus={e: uses_curve(e, curve, on_loopback) for e in self.broker.bound},
                    events={e: uses_curve(e, curve, on_loopback) for e in self.events.bound},
                )
            )
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # Clients still find the box by its ipc socket in the data dir.
            log.warning("the disk is full: endpoints not published (%s)", exc)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                self.stop()
                return


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


@contextmanager
def _start_failures(cls: Any) -> Iterator[None]:
    """A component's own error while it is built or started as one line (a BoxError as it
    is); the traceback goes to the log."""
    try:
        yield
    except BoxError:
        raise
    except Exception as exc:
        name = getattr(cls, "name", getattr(cls, "__name__", repr(cls)))
        log.error("component %r (%s) failed to start", name, where_defined(cls), exc_info=exc)
        raise ConfigError(
            f"component {name!r} ({where_defined(cls)}) failed to start: {exc!r}; the log has "
            f"the traceback. Fix it, or leave the plugin that brings it out with {LOAD_ENV}"
        ) from exc


async def _warn_if_slow(scope: anyio.CancelScope, name: str) -> None:
    with scope:
        await anyio.sleep(SLOW_START_S)
        log.warning(
            "component %r has not started after %g s; still waiting (Ctrl-C stops the box). "
            "Its serve() must call task_status.started() once its services are registered",
            name,
            SLOW_START_S,
        )


def _remove_sockets(data_dir: Path) -> list[Path]:
    """Remove the data dir's ipc socket files (libzmq leaves them behind); -> those removed."""
    removed = []
    for name in SOCKET_FILES:
        path = data_dir / name
        if path.exists():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _clear_stale_sockets(data_dir: Path) -> None:
    for stale in _remove_sockets(data_dir):
        log.info("removed %s, left by a box that did not stop cleanly", stale)
    clear_endpoints(data_dir)


class _DataDirLock:
    """An exclusive lock on the data dir, so two boxes never share one database."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _DataDirLock:
        self._file = open(self.path, "a+")  # noqa: SIM115 - held for the box's lifetime
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            pid = self._file.read().strip() or "?"
            self._file.close()
            raise ConfigError(
                f"another box (pid {pid}) is running with data dir {self.path.parent}; "
                f"stop it first (`aether-box --data-dir {self.path.parent} stop`), or pass "
                "another --data-dir"
            ) from None
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def running_pid(data_dir: Path) -> int | None:
    """The pid of the box that holds `data_dir`'s lock; None when no box runs there."""
    try:
        handle = open(data_dir / LOCK_FILE)  # noqa: SIM115 - closed below
    except (FileNotFoundError, NotADirectoryError):
        return None
    with handle:
        try:  # shared and non-blocking: a running box holds it exclusively
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            if not text.isdigit():  # between the box's lock and its write of the pid
                raise ConfigError(
                    f"a box is starting with data dir {data_dir}; try again in a moment"
                ) from None
            return int(text)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _lock_data_dir(data_dir: Path) -> _DataDirLock:
    try:
        make_private(data_dir)  # before the first file of this run is made
        lock = _DataDirLock(data_dir / LOCK_FILE).__enter__()
    except OSError as exc:  # a file of that name, a read-only disk, no permission
        raise unusable_data_dir(data_dir, exc) from exc
    # Holding the lock proves no box runs here: what a crashed one left is stale.
    _clear_stale_sockets(data_dir)
    return lock


def _unlock_data_dir(lock: _DataDirLock) -> None:
    try:  # still holding the lock: no other box can have bound these sockets yet
        _remove_sockets(lock.path.parent)
    finally:
        lock.__exit__()


def _start_authenticator(context: zmq.asyncio.Context, allow_list: AllowList) -> Any:
    # ZAP: only clients whose public key the allow list holds (keys/authorized/, and grid
    # members admitted while the box runs) get through CURVE, each with its key's scope.
    from zmq.auth.asyncio import AsyncioAuthenticator

    class ScopedAuthenticator(AsyncioAuthenticator):
        """Names each CURVE connection by its key's scope and the key (see bus/scopes.py)."""

        def curve_user_id(self, client_public_key: bytes) -> str:
            key = z85.encode(client_public_key)
            return user_id(allow_list.scopes.get(key, USE), key)

    authenticator = ScopedAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=allow_list)
    return authenticator

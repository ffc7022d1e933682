"""The `grid` service: join, leave, revoke and list members; heartbeats; placement.

A grid is a full mesh of boxes that admit each other's CURVE keys. A newcomer joins through
any member (`join`: it says `hello` there); that member admits it, introduces it to every
other member, and answers with the member list, so the newcomer links to all of them. A
member that restarts says `hello` again to each member it knows (its address may have
changed). Members are trusted as a whole: one member's word admits a newcomer on all.
`revoke` drops a member on every box at once: its key is refused from then on, also on
connections it already has (see aether_box.bus.security.AllowList).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import anyio
import anyio.abc

from aether_box.bus.scopes import ADMIN
from aether_box.bus.security import AllowList, CurveKeys, server_keys, uses_curve
from aether_box.bus.service import OpService, Request, require
from aether_box.bus.settings import BusSettings
from aether_box.client import AsyncClient
from aether_box.context import BoxContext
from aether_box.contract import Grid, ModelCatalog
from aether_box.errors import BadRequest, BoxError, NotFound, ServiceUnavailable, Timeout
from aether_box.federation.book import PeerBook, PeerRecord
from aether_box.grid.link import SERVICE, MemberLink
from aether_box.grid.placement import Candidate, expected_wait_s, rank, reason
from aether_box.grid.settings import GridSettings

__all__ = ["GridComponent"]

log = logging.getLogger(__name__)
HELLO_TIMEOUT_S = 5.0
CAPABILITIES_EVERY_S = 1.0  # how often this box looks whether its own capabilities changed
KEY_FILE = "grid-{name}.key"  # a member's key in keys/authorized/, admitted by the grid


class GridComponent(OpService, Grid):
    """Serves `grid`, runs one MemberLink per member, and places requests; see the module."""

    name: ClassVar[str] = "grid"
    settings_class: ClassVar[type | None] = GridSettings

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.get(GridSettings)
        assert self.settings.members_file is not None and self.settings.name is not None
        self.me = self.settings.name
        self.book = PeerBook(
            self.settings.members_file, "members", "join again with `aether-box grid join`"
        )
        # Members this box left while they were down: told when they are back (kept
        # across restarts, else such a member would count this box in for ever).
        self.leaving = PeerBook(
            self.settings.members_file.with_suffix(".leaving.toml"),
            "leaving",
            "those members are not told",
        )
        self._byes: dict[str, anyio.CancelScope] = {}
        self.links: dict[str, MemberLink] = {}
        self.placements: Counter[tuple[str, str]] = Counter()  # (box, reason kind)
        self.placed_here: Counter[str] = Counter()  # per model: placed here, unfinished
        self.failovers: Counter[str] = Counter()  # "retried", "failed_after_partial"
        self.revoked: list[str] = []  # names revoked while the box runs
        self._capabilities: dict[str, Any] = {"services": [], "models": []}
        self._digest = ""
        self._keys: CurveKeys | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def member_name(self) -> str:
        return self.me

    # ----------------------------------------------------------------- lifecycle

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        await anyio.to_thread.run_sync(self.book.load)
        await anyio.to_thread.run_sync(self.leaving.load)
        self._keys = await anyio.to_thread.run_sync(server_keys, ctx.data_dir)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self._refresh_capabilities()
            for record in self.book.peers.values():
                self._start(record)
                tg.start_soon(self._hello_again, record)  # back from a restart: say so
            for record in self.leaving.peers.values():
                self._bye_later(record)
            ctx.add_service(SERVICE, self)
            task_status.started()
            while True:  # pushed to members with the next heartbeat when they change
                await anyio.sleep(CAPABILITIES_EVERY_S)
                await self._refresh_capabilities()

    def status_section(self) -> dict[str, Any]:
        """The `grid` section of `status`."""
        return {
            "name": self.me,
            "endpoint": self._advertised(check=False),
            "members": [link.describe() for link in self.links.values()],
            "placements": [
                {"box": box, "reason": why, "count": n}
                for (box, why), n in sorted(self.placements.items())
            ],
            "failovers": dict(self.failovers),
            "revoked": self.revoked,
        }

    # ----------------------------------------------------------------- ops from the CLI

    async def op_status(self, request: Request) -> dict[str, Any]:
        return self.status_section()

    async def op_join(self, request: Request) -> dict[str, Any]:
        """Join the grid of the box at `endpoint` (its public key: `server_key`)."""
        endpoint = require(request.body, "endpoint", str)
        key = require(request.body, "server_key", str)
        PeerRecord("member", endpoint, key)  # a bad endpoint or key: say so, not a ZMQError
        me = self._me()
        if key == me["key"] or endpoint == me["endpoint"]:
            raise BadRequest(
                f"{endpoint} with that key is this box itself; join through another box: "
                "its bus endpoint and its keys/server.key"
            )
        try:
            async with AsyncClient(
                endpoint, timeout=HELLO_TIMEOUT_S, curve=self._curve(key), check=False
            ) as client:
                reply = await client.request(SERVICE, {"op": "hello", "member": me})
        except Timeout:
            raise ServiceUnavailable(
                f"{endpoint} did not answer within {HELLO_TIMEOUT_S:g} s. Is it a box with "
                f"grid support listening there, does --server-key match its keys/server.key, "
                f"and is this box's public key ({me['key']}, the file keys/server.key here) "
                "authorized there? Run `aether-box keys authorize THIS-BOX.key --scope admin` "
                "on it; it takes effect at once."
            ) from None
        joined = []
        for member in reply.get("members", []):
            if member["name"] == self.me or member.get("key") == me["key"]:
                continue
            await self._admit(member)
            joined.append(member["name"])
            if member["name"] != reply["name"]:
                assert self._tg is not None
                self._tg.start_soon(self._hello_again, self.book.peers[member["name"]])
        await self._wait_up(joined)
        return {"joined": reply["name"], **self.status_section()}

    async def op_leave(self, request: Request) -> dict[str, Any]:
        """Leave the grid: tell every member, then forget them all."""
        names = sorted(self.links)
        told = await self.ask_members(SERVICE, {"op": "bye", "name": self.me}, timeout=2.0)
        not_told = sorted(n for n, r in told.items() if isinstance(r, BaseException))
        if not_told:
            self.leaving.peers.update((name, self.book.peers[name]) for name in not_told)
            await anyio.to_thread.run_sync(self.leaving.save)
        for name in names:
            await self._drop(name, revoke=False)
        for name in not_told:
            self._bye_later(self.leaving.peers[name])
        return {"left": names, "not_told": not_told}

    async def op_revoke(self, request: Request) -> dict[str, Any]:
        """Revoke member `name`'s key here and on every other member, at once."""
        name = require(request.body, "name", str)
        record = self.book.peers.get(name)
        if record is None:
            raise NotFound(f"no member {name!r} in this grid; members: {sorted(self.book.peers)}")
        await self._drop(name, revoke=True)
        told = await self.ask_members(
            SERVICE, {"op": "revoked", "key": record.server_key}, timeout=2.0
        )
        return {
            "revoked": name,
            "key": record.server_key,
            "not_told": sorted(n for n, r in told.items() if isinstance(r, BaseException)),
        }

    # ----------------------------------------------------------------- ops from members

    async def op_hello(self, request: Request) -> dict[str, Any]:
        """A box joins (or a member is back): admit it, introduce it, answer the members."""
        member = _member(request.body.get("member"))
        if request.body.get("again") and member["name"] in self._byes:
            # A member back from a restart, and this box left meanwhile: this is its bye.
            await self._told(member["name"])
            raise NotFound(f"{self.me} left the grid while {member['name']} was away")
        if member["name"] == self.me:
            raise BadRequest(
                f"this box is called {self.me!r} in the grid too; give one of them another "
                "name (`--set grid.name=NAME`, or [grid] name in its config)"
            )
        known = self.book.peers.get(member["name"])
        if known is not None and known.server_key != member["key"]:
            raise BadRequest(
                f"the grid already has a member {member['name']!r} with another key; "
                "choose another name for the new box (grid.name), or revoke the old one"
            )
        changed = known is None or known.endpoint != member["endpoint"]
        await self._admit(member)
        if changed:  # the others admit it before it says hello to them
            others = {n: link for n, link in self.links.items() if n != member["name"]}
            await self._ask(others, SERVICE, {"op": "introduce", "member": member}, 1.0)
        return {"name": self.me, "members": [self._me(), *self._records()]}

    async def op_introduce(self, request: Request) -> dict[str, Any]:
        member = _member(request.body.get("member"))
        if member["name"] != self.me:
            await self._admit(member)
        return {"ok": True}

    async def op_beat(self, request: Request) -> dict[str, Any]:
        link = self._link_from(request.body)
        load = request.body.get("load")
        link.heard(load if isinstance(load, Mapping) else {})
        return {"need_capabilities": request.body.get("digest") != link.capabilities_hash}

    async def op_capabilities(self, request: Request) -> dict[str, Any]:
        link = self._link_from(request.body)
        caps = {
            key: [str(item) for item in value] if isinstance(value, list) else []
            for key, value in request.body.items()
            if key not in ("op", "from", "digest")
        }
        link.pushed(caps, str(request.body.get("digest")))
        return {"ok": True}

    async def op_bye(self, request: Request) -> dict[str, Any]:
        name = require(request.body, "name", str)
        if name in self.book.peers:
            await self._drop(name, revoke=False)
        return {"ok": True}

    async def op_revoked(self, request: Request) -> dict[str, Any]:
        key = require(request.body, "key", str)
        for name, record in list(self.book.peers.items()):
            if record.server_key == key:
                await self._drop(name, revoke=True)
        if self._keys is not None and key == self._keys.public.decode():
            # This box itself was revoked: the grid is gone for it.
            for name in list(self.book.peers):
                await self._drop(name, revoke=False)
        return {"ok": True}

    # ----------------------------------------------------------------- Grid (placement)

    def places(self, service: str, model: str) -> bool:
        return any(link.has(service, model) for link in self.links.values())

    async def place(
        self,
        service: str,
        model: str,
        request: Request,
        here: Callable[[Request], Awaitable[Mapping[str, Any] | None]] | None,
    ) -> Mapping[str, Any]:
        ranked = self._candidates(service, model, local=here is not None)
        if not ranked:
            raise ServiceUnavailable(f"no box in the grid is up with {service} model {model!r}")
        kind, why = reason(ranked)
        sent: list[Mapping[str, Any]] = []

        async def pass_on(body: Mapping[str, Any]) -> None:
            sent.append(body)
            await request.partial(body)

        counted = Request(request.service, request.body, pass_on)
        first = ranked[0]
        try:
            reply = await self._serve_on(first, service, model, counted, here)
        except ServiceUnavailable as exc:
            if first.local:  # this box's own answer: nothing went away
                raise
            failed = exc
        else:
            self.placements[(first.box, kind)] += 1
            return _with_grid(reply, first, kind, why)
        if sent:  # a stream already went out: it cannot start again elsewhere
            self.failovers["failed_after_partial"] += 1
            text = "".join(str(p.get("token", "")) for p in sent)
            raise ServiceUnavailable(
                f"member {first.box} stopped mid-stream after {len(sent)} partial replies "
                f"(text so far: {text!r}); {failed}. Ask again: it will go to another box"
            )
        if len(ranked) == 1:
            raise failed
        self.failovers["retried"] += 1
        second = ranked[1]
        reply = await self._serve_on(second, service, model, counted, here)
        self.placements[(second.box, "failover")] += 1
        why = f"failover: {first.box} stopped answering before it replied ({failed})"
        return _with_grid(reply, second, "failover", why)

    async def ask_members(
        self, service: str, body: Mapping[str, Any], *, timeout: float
    ) -> dict[str, Mapping[str, Any] | BaseException]:
        return await self._ask(dict(self.links), service, body, timeout)

    # ----------------------------------------------------------------- inside

    def _candidates(self, service: str, model: str, *, local: bool) -> list[Candidate]:
        found = []
        if local:
            catalog = self.ctx.get(ModelCatalog)
            load = catalog.loads().get(model) if catalog is not None else None
            found.append(Candidate(self.me, expected_wait_s(load, self.placed_here[model])))
        for name, link in self.links.items():
            if link.has(service, model):
                wait = expected_wait_s(link.model_load(model), link.placed[model])
                found.append(Candidate(name, wait, link))
        return rank(found)

    async def _serve_on(
        self,
        where: Candidate,
        service: str,
        model: str,
        request: Request,
        here: Callable[[Request], Awaitable[Mapping[str, Any] | None]] | None,
    ) -> Mapping[str, Any]:
        if where.link is None:
            assert here is not None
            self.placed_here[model] += 1
            try:
                return await here(request) or {}
            finally:
                self.placed_here[model] -= 1
        link: MemberLink = where.link
        link.placed[model] += 1
        try:
            return await link.forward(service, request, routed=True)
        finally:
            link.placed[model] -= 1

    async def _ask(
        self, links: dict[str, MemberLink], service: str, body: Mapping[str, Any], timeout: float
    ) -> dict[str, Mapping[str, Any] | BaseException]:
        answers: dict[str, Mapping[str, Any] | BaseException] = {}

        async def ask(name: str, link: MemberLink) -> None:
            try:
                with anyio.fail_after(timeout):
                    answers[name] = await link.request(service, body, timeout=timeout)
            except (BoxError, TimeoutError) as exc:
                answers[name] = exc

        async with anyio.create_task_group() as tg:
            for name, link in links.items():
                tg.start_soon(ask, name, link)
        return answers

    def _link_from(self, body: Mapping[str, Any]) -> MemberLink:
        name = require(body, "from", str)
        link = self.links.get(name)
        if link is None:
            raise NotFound(
                f"{name} is not a member of {self.me}'s grid (it left, or was revoked); "
                "join again with `aether-box grid join`"
            )
        return link

    async def _admit(self, member: Mapping[str, str]) -> None:
        """Admit `member`'s key, keep it in the book, and link to it (again if it moved)."""
        name, endpoint, key = member["name"], member["endpoint"], member["key"]
        allow = self._allow_list()
        if name in self._byes:  # in the grid again: no bye is owed
            await self._told(name)
        # Members hold `admin` on each other: the grid's own messages (hello, heartbeats,
        # introductions, revocations) are admin ops (see aether_box.bus.scopes).
        await anyio.to_thread.run_sync(allow.admit, KEY_FILE.format(name=name)[:-4], key, ADMIN)
        record = PeerRecord(name, endpoint, key)
        if self.book.peers.get(name) == record and name in self.links:
            return
        self.book.peers[name] = record
        await anyio.to_thread.run_sync(self.book.save)
        old = self.links.pop(name, None)
        if old is not None:
            old.close()
        self._start(record)
        log.info("grid: %s is a member at %s", name, endpoint)
        self.ctx.events.publish("grid.member", {"name": name, "endpoint": endpoint})

    async def _drop(self, name: str, *, revoke: bool) -> None:
        """Forget member `name`: unlink it, and refuse its key from now on if `revoke`."""
        record = self.book.peers.pop(name, None)
        await anyio.to_thread.run_sync(self.book.save)
        link = self.links.pop(name, None)
        if link is not None:
            link.close()
        allow = self.ctx.view.allow_list
        if allow is not None and record is not None and record.server_key:
            if revoke:
                await anyio.to_thread.run_sync(allow.revoke, record.server_key)
                self.revoked.append(name)
            else:
                await anyio.to_thread.run_sync(allow.remove, KEY_FILE.format(name=name))
        log.info("grid: %s %s", name, "revoked" if revoke else "left")
        self.ctx.events.publish("grid.left", {"name": name, "revoked": revoke})

    async def _hello_again(self, record: PeerRecord) -> None:
        """Tell a known member where this box is now (it may have restarted elsewhere)."""
        assert record.server_key is not None
        try:
            async with AsyncClient(
                record.endpoint,
                timeout=HELLO_TIMEOUT_S,
                curve=self._curve(record.server_key),
                check=False,
            ) as client:
                await client.request(SERVICE, {"op": "hello", "member": self._me(), "again": True})
        except NotFound as exc:  # it left the grid while this box was away
            log.info("grid: %s", exc.message)
            if self.book.peers.get(record.name) == record:
                await self._drop(record.name, revoke=False)
        except BoxError as exc:
            log.info("grid: %s did not hear this box's hello (%s)", record.name, exc)

    def _bye_later(self, record: PeerRecord) -> None:
        """Say bye to a member that was down when this box left, once it is back."""
        assert self._tg is not None
        scope = self._byes[record.name] = anyio.CancelScope()

        async def bye() -> None:
            with scope:
                while True:
                    try:
                        async with AsyncClient(
                            record.endpoint,
                            timeout=2.0,
                            curve=self._curve(record.server_key or ""),
                            check=False,
                        ) as client:
                            await client.request(SERVICE, {"op": "bye", "name": self.me})
                        break
                    except BoxError:
                        await anyio.sleep(HELLO_TIMEOUT_S)
            if not scope.cancel_called:  # else it was told another way
                await self._told(record.name)

        self._tg.start_soon(bye)

    async def _told(self, name: str) -> None:
        """Member `name` knows this box left (or is a member again): stop saying bye."""
        scope = self._byes.pop(name, None)
        if scope is not None:
            scope.cancel()
        if self.leaving.peers.pop(name, None) is not None:
            await anyio.to_thread.run_sync(self.leaving.save)

    async def _wait_up(self, names: list[str]) -> None:
        """Give new links a moment, so a reply can already say they answer."""
        with anyio.move_on_after(HELLO_TIMEOUT_S):
            for name in names:
                link = self.links.get(name)
                if link is not None:
                    await link.first_look.wait()

    def _start(self, record: PeerRecord) -> MemberLink:
        assert self._tg is not None
        link = self.links[record.name] = MemberLink(
            self.ctx, record, self._keys, self.settings, self._beat, self._capabilities_body
        )
        self._tg.start_soon(link.run)
        return link

    def _beat(self) -> dict[str, Any]:
        catalog = self.ctx.get(ModelCatalog)
        broker = self.ctx.view.broker
        return {
            "op": "beat",
            "from": self.me,
            "digest": self._digest,
            "load": {
                "models": catalog.loads() if catalog is not None else {},
                "in_flight": broker.in_flight,
            },
        }

    def _capabilities_body(self) -> dict[str, Any]:
        return {"from": self.me, "digest": self._digest, **self._capabilities}

    async def _refresh_capabilities(self) -> None:
        """What this box offers, as members see it; a new digest gets it pushed to them."""
        catalog = self.ctx.get(ModelCatalog)
        services = sorted(self.ctx.view.broker.services)
        caps: dict[str, Any] = {
            "services": [s for s in services if "/" not in s],
            "models": sorted(catalog.installed()) if catalog is not None else [],
            # LoRA adapters, once a box serves `adapters` (none yet: then an empty list).
            "adapters": await self._names("adapters", {"op": "list"}, "adapters"),
            "projectors": await self._names("align", {"op": "list"}, "projectors"),
            "collections": await self._names("memory", {"op": "collections"}, "collections"),
        }
        self._capabilities = caps
        self._digest = hashlib.sha1(json.dumps(caps, sort_keys=True).encode()).hexdigest()[:16]

    async def _names(self, service: str, body: dict[str, Any], key: str) -> list[str]:
        if not self.ctx.has_service(service):
            return []
        try:
            reply = await self.ctx.call(service, body)
        except BoxError:
            return []
        items = reply.get(key)
        return sorted(
            str(item.get("name") if isinstance(item, Mapping) else item)
            for item in (items if isinstance(items, list) else [])
        )

    def _records(self) -> list[dict[str, str]]:
        return [
            {"name": r.name, "endpoint": r.endpoint, "key": r.server_key or ""}
            for r in self.book.peers.values()
        ]

    def _me(self) -> dict[str, str]:
        if self._keys is None:
            raise BadRequest(
                "the grid links boxes over CURVE only, and this box has no keys: run "
                "`aether-box keys init`, then restart it"
            )
        return {"name": self.me, "endpoint": self._advertised(), "key": self._keys.public.decode()}

    def _advertised(self, *, check: bool = True) -> str | None:
        """The endpoint members reach this box at; it must use CURVE."""
        broker = self.ctx.view.broker
        endpoint = self.settings.advertise or next(
            (
                e
                for e in broker.bound
                if e.startswith("tcp://") and not e.startswith(("tcp://0.0.0.0", "tcp://*"))
            ),
            None,
        )
        if not check:
            return endpoint
        if endpoint is None:
            raise BadRequest(
                "this box listens on no tcp address members could reach; bind one "
                "(`--set bus.endpoints=[...]`) or set grid.advertise"
            )
        on_loopback = self.ctx.config.get(BusSettings).curve_on_loopback
        if not uses_curve(endpoint, broker.curve, on_loopback):
            raise BadRequest(
                f"this box serves {endpoint} without CURVE, and grid links are CURVE only: "
                "run `aether-box keys init` (and for a loopback address `--set bus.curve=on`), "
                "then restart it"
            )
        return endpoint

    def _curve(self, server_key: str) -> tuple[CurveKeys, bytes]:
        if self._keys is None:
            self._me()  # raises, saying what to do
        assert self._keys is not None
        return self._keys, server_key.encode()

    def _allow_list(self) -> AllowList:
        allow = self.ctx.view.allow_list
        if allow is None:
            raise BadRequest(
                "this box does not use CURVE, and grid links are CURVE only: run "
                "`aether-box keys init` (on loopback also `--set bus.curve=on`), then restart it"
            )
        return allow


def _member(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(value.get(k), str) and value.get(k) for k in ("name", "endpoint", "key")
    ):
        raise BadRequest("a member is {name, endpoint, key}, each a non-empty string")
    PeerRecord(value["name"], value["endpoint"], value["key"])  # checks each
    return {k: str(value[k]) for k in ("name", "endpoint", "key")}


def _with_grid(reply: Mapping[str, Any], where: Candidate, kind: str, why: str) -> dict[str, Any]:
    """The reply, with where it ran and why in its "grid" field."""
    return {
        **reply,
        "grid": {"box": where.box, "reason": kind, "why": why, "expected_wait_s": where.wait_s},
    }

"""Turn a `status` report into rows for the dashboard, tolerating sections of unknown shape.

The "models", "memory", "align" and "peers" sections come from other components and may
be lists of records, maps of name -> record, or maps holding such a list under a key; a
record's fields are looked up under several likely names. Nothing here touches the UI.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "MISSING",
    "RateTracker",
    "History",
    "fmt_bytes",
    "fmt_count",
    "fmt_duration",
    "fmt_float",
    "fmt_ms",
    "pick",
    "records",
    "service_rows",
    "route_rows",
    "http_routes",
    "model_rows",
    "memory_rows",
    "projector_rows",
    "peer_rows",
    "scalars",
]

MISSING = "-"
Row = tuple[str, ...]


# ------------------------------------------------------------------------- formatting


def fmt_float(value: Any, digits: int = 1) -> str:
    """A number with `digits` decimals, or "-" when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    return f"{value:.{digits}f}"


def fmt_ms(value: Any) -> str:
    """Milliseconds, with three significant-ish decimals below 1 ms."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    if value < 1:
        return f"{value:.3f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def fmt_count(value: Any) -> str:
    """An integer count with thousands separators."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    return f"{int(value):,}"


def fmt_bytes(value: Any) -> str:
    """Bytes as B/KiB/MiB/GiB."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return MISSING  # unreachable: the loop returns at GiB


def fmt_duration(seconds: Any) -> str:
    """An uptime such as 3d 04:05:06 or 00:01:02."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return MISSING
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


# ------------------------------------------------------------------- tolerant access


def pick(record: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """The first of `keys` present (and not None) in `record`; dotted keys look inside maps."""
    for key in keys:
        value: Any = record
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
            if value is None:
                break
        if value is not None:
            return value
    return default


def records(section: Any, *list_keys: str) -> list[dict[str, Any]]:
    """The records in a section: a list of maps, a map of name -> map, or either under a key."""
    if isinstance(section, Mapping):
        for key in list_keys:
            if key in section:
                return records(section[key])
        if section and all(isinstance(v, Mapping) for v in section.values()):
            return [{"name": str(name), **value} for name, value in section.items()]
        return []
    if isinstance(section, list | tuple):
        out = []
        for item in section:
            if isinstance(item, Mapping):
                out.append(dict(item))
            elif isinstance(item, str):
                out.append({"name": item})
        return out
    return []


def scalars(section: Any, limit: int = 8) -> list[tuple[str, str]]:
    """Top-level scalar fields of a section, for sections whose records we cannot find."""
    if not isinstance(section, Mapping):
        return []
    out = []
    for key, value in section.items():
        if isinstance(value, bool):
            out.append((str(key), "yes" if value else "no"))
        elif isinstance(value, int | float):
            out.append(
                (str(key), fmt_float(value, 2) if isinstance(value, float) else fmt_count(value))
            )
        elif isinstance(value, str):
            out.append((str(key), value))
        if len(out) >= limit:
            break
    return out


# ------------------------------------------------------------------------- counters


class RateTracker:
    """Requests per second per service, from the counts of two successive polls."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}
        self.rates: dict[str, float | None] = {}

    def reset(self) -> None:
        """Forget the previous counts (a new box restarts its counters)."""
        self._last.clear()
        self.rates.clear()

    def update(
        self, services: Mapping[str, Any], now: float | None = None
    ) -> dict[str, float | None]:
        """Record this poll's counts; returns the rates (None until two polls are seen)."""
        now = time.monotonic() if now is None else now
        rates: dict[str, float | None] = {}
        for name, svc in services.items():
            count = svc.get("requests") if isinstance(svc, Mapping) else None
            if not isinstance(count, int):
                rates[name] = None
                continue
            previous = self._last.get(name)
            self._last[name] = (now, count)
            if previous is None or now <= previous[0] or count < previous[1]:
                rates[name] = None  # first sight, or a restarted box's fresh counters
                continue
            rates[name] = (count - previous[1]) / (now - previous[0])
        self.rates = rates
        return rates


class History:
    """A bounded series of samples per key (tokens/s per model, for the sparkline)."""

    def __init__(self, size: int = 60) -> None:
        self.size = size
        self._series: dict[str, deque[float]] = {}

    def add(self, key: str, value: float) -> None:
        self._series.setdefault(key, deque(maxlen=self.size)).append(float(value))

    def last(self, key: str) -> float | None:
        series = self._series.get(key)
        return series[-1] if series else None

    def get(self, key: str) -> list[float]:
        return list(self._series.get(key, ()))

    def keys(self) -> list[str]:
        return list(self._series)


# ---------------------------------------------------------------------------- rows


def service_rows(services: Mapping[str, Any], rates: Mapping[str, float | None]) -> dict[str, Row]:
    """name -> (name, kind, workers, req/s, requests, errors, queued, in flight, p50, p95)."""
    rows: dict[str, Row] = {}
    for name, svc in sorted(services.items()):
        if not isinstance(svc, Mapping):
            continue
        rate = rates.get(name)
        rows[name] = (
            name,
            str(svc.get("kind", MISSING)),
            fmt_count(svc.get("workers")),
            MISSING if rate is None else f"{rate:.1f}",
            fmt_count(svc.get("requests")),
            fmt_count(svc.get("errors")),
            fmt_count(svc.get("queued")),
            fmt_count(svc.get("in_flight")),
            fmt_ms(svc.get("p50_ms")),
            fmt_ms(svc.get("p95_ms")),
        )
    return rows


def http_routes(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The gateway's routes as "http ROUTE" -> counts, to sit with the bus services."""
    http = report.get("http")
    routes = http.get("routes") if isinstance(http, Mapping) else None
    if not isinstance(routes, Mapping):
        return {}
    return {f"http {route}": c for route, c in routes.items() if isinstance(c, Mapping)}


def route_rows(routes: Mapping[str, Any], rates: Mapping[str, float | None]) -> dict[str, Row]:
    """HTTP routes as services-table rows (kind "http"); errors count 4xx and 5xx answers."""
    rows: dict[str, Row] = {}
    for name, counts in sorted(routes.items()):
        rate = rates.get(name)
        failed = [_number(counts.get(k)) for k in ("errors", "client_errors")]
        rows[name] = (
            name.removeprefix("http "),  # the kind column says http; the route keeps it narrow
            "http",
            MISSING,
            MISSING if rate is None else f"{rate:.1f}",
            fmt_count(counts.get("requests")),
            fmt_count(sum(x for x in failed if x is not None)),
            MISSING,
            MISSING,
            fmt_ms(counts.get("p50_ms")),
            fmt_ms(counts.get("p95_ms")),
        )
    return rows


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _bytes(
    record: Mapping[str, Any], mb_keys: tuple[str, ...], byte_keys: tuple[str, ...]
) -> float | None:
    """A size from MiB fields (preferred) or byte fields."""
    mb = _number(pick(record, *mb_keys))
    return mb * 2**20 if mb is not None else _number(pick(record, *byte_keys))


def _name(record: Mapping[str, Any]) -> str:
    return str(pick(record, "name", "model", "id", default="?"))


def _is_loaded(record: Mapping[str, Any]) -> bool:
    flag = pick(record, "loaded")
    if isinstance(flag, bool):
        return flag
    state = pick(record, "state", "status")
    return isinstance(state, str) and state.lower().startswith("loaded")


def model_rows(section: Any) -> dict[str, tuple[Row, float | None]]:
    """name -> ((name, kind, state, memory or size, tok/s, slots, ttft, device), tok/s or None).

    Slots read "busy/all" with "+N" for requests queued behind them, from the generation
    scheduler's figures; ttft is its recent median time to first token.

    A model loaded in several roles (generate, embed) is one row: memory summed, roles listed.
    """
    if isinstance(section, Mapping) and ("loaded" in section or "installed" in section):
        installed = records(section.get("installed"))
        loaded = records(section.get("loaded"))
    else:
        installed = records(section, "models")
        loaded = [r for r in installed if _is_loaded(r)]
    rows: dict[str, tuple[Row, float | None]] = {}
    info: dict[str, Mapping[str, Any]] = {}
    for record in installed:
        name = _name(record)
        info[name] = record
        size = _bytes(record, ("size_mb",), ("size_bytes", "size", "bytes"))
        kind = str(pick(record, "kind", "type", default=MISSING))
        rows[name] = (
            (name, kind, "installed", fmt_bytes(size), MISSING, MISSING, MISSING, MISSING),
            None,
        )
    instances: dict[str, list[dict[str, Any]]] = {}
    for record in loaded:
        instances.setdefault(_name(record), []).append(record)
    for name, group in instances.items():
        first = {**info.get(name, {}), **group[0]}
        roles = [str(r["role"]) for r in group if r.get("role")]
        sizes = [
            _bytes(r, ("memory_mb", "rss_mb"), ("memory_bytes", "memory", "bytes")) for r in group
        ]
        memory = (
            sum(x for x in sizes if x is not None) if any(x is not None for x in sizes) else None
        )
        speeds = [_number(pick(r, "tokens_per_s", "tok_per_s", "tps")) for r in group]
        tps = next((x for x in speeds if x is not None), None)
        devices = sorted({str(d) for r in group if (d := pick(r, "device", "provider", "backend"))})
        scheduler = next(
            (r["scheduler"] for r in group if isinstance(r.get("scheduler"), Mapping)), {}
        )
        rows[name] = (
            (
                name,
                str(pick(first, "kind", "type", default=MISSING)),
                "loaded" + (f" ({', '.join(roles)})" if roles else ""),
                fmt_bytes(memory),
                fmt_float(tps),
                _slots(scheduler),
                _ms(_number(scheduler.get("ttft_ms"))),
                ", ".join(devices) or MISSING,
            ),
            tps,
        )
    return dict(sorted(rows.items()))


def with_pins(rows: Mapping[str, Row], sessions: Any) -> dict[str, Row]:
    """Model rows with "pinned by N" (sessions) in their state: those stay loaded."""
    pinned = sessions.get("pinned_models") if isinstance(sessions, Mapping) else None
    out = dict(rows)
    for model, ids in (pinned if isinstance(pinned, Mapping) else {}).items():
        if model in out and isinstance(ids, list) and ids:
            cells = out[model]  # short: the state column is the table's widest
            out[model] = (*cells[:2], f"{cells[2]} · pinned by {len(ids)}", *cells[3:])
    return out


def adapter_rows(section: Any) -> dict[str, Row]:
    """LoRA adapters as rows of the models table: "↳ name" -> (name, "lora rN · base",
    fusion verdict with KL and top-1, requests, tok/s, -, -, probe progress)."""
    if not isinstance(section, Mapping):
        return {}
    probe = section.get("probe") if isinstance(section.get("probe"), Mapping) else {}
    rows: dict[str, Row] = {}
    for record in records(section.get("adapters")):
        name = _name(record)
        verdict = str(record.get("verdict") or MISSING)
        kl, top1 = _number(record.get("kl_mean")), _number(record.get("top1"))
        if kl is not None and top1 is not None:
            verdict += f" KL {kl:.3f} top-1 {top1:.0%}"
        if record.get("pruned"):
            verdict += " · pruned"
        progress = (
            f"probing {probe.get('done', 0)}/{probe.get('total', '?')}"
            if probe.get("running") == name
            else MISSING
        )
        rows[f"↳ {name}"] = (
            f"↳ {name}",
            f"lora r{record.get('rank', '?')} · {record.get('base', '?')}",
            verdict,
            f"{fmt_count(record.get('requests'))} req",
            fmt_float(_number(record.get("tokens_per_s"))),
            MISSING,
            MISSING,
            progress,
        )
    return rows


def baked_rows(section: Any) -> dict[str, Row]:
    """Baked copies of hot adapter sets, as rows under their model: "⤷ model baked N" ->
    (name, "baked · types", state or bake progress, memory, tok/s, slots, TTFT, the set)."""
    if not isinstance(section, Mapping):
        return {}
    rows: dict[str, Row] = {}
    for model in records(section, "loaded"):
        scheduler = model.get("scheduler")
        if not isinstance(scheduler, Mapping):
            continue
        for i, copy in enumerate(records(scheduler.get("baked"))):
            own = copy.get("scheduler") if isinstance(copy.get("scheduler"), Mapping) else {}
            progress = copy.get("progress") if isinstance(copy.get("progress"), Mapping) else {}
            state = str(copy.get("state") or MISSING)
            if state == "baking":
                state += f" {progress.get('done', 0)}/{progress.get('of', '?')}"
            types = copy.get("types") if isinstance(copy.get("types"), Mapping) else {}
            memory = _number(copy.get("memory_mb"))
            name = f"⤷ {_name(model)} baked {i + 1}"
            rows[name] = (
                name,
                "baked · " + (", ".join(str(t) for t in types) or MISSING),
                state,
                fmt_bytes(memory * 2**20 if memory else None),
                fmt_float(_number(own.get("aggregate_tokens_per_s"))),
                _slots(own),
                _ms(_number(own.get("ttft_ms"))),
                str(copy.get("adapters") or MISSING),
            )
    return rows


def _slots(scheduler: Mapping[str, Any]) -> str:
    """ "busy/all", with "+N" when N requests wait for a slot; "-" without a scheduler."""
    busy, slots = _number(scheduler.get("slots_busy")), _number(scheduler.get("slots"))
    if busy is None or slots is None:
        return MISSING
    queue = _number(scheduler.get("queue")) or 0
    return f"{busy:.0f}/{slots:.0f}" + (f" +{queue:.0f}" if queue else "")


def _ms(value: float | None) -> str:
    return MISSING if value is None else f"{value:.0f} ms"


def memory_rows(section: Any) -> dict[str, Row]:
    """collection -> (name, model, dim, count, index size and how searches scan it)."""
    rows: dict[str, Row] = {}
    for record in records(section, "collections"):
        name = str(pick(record, "name", "collection", default="?"))
        size = fmt_bytes(_bytes(record, ("index_mb", "size_mb", "db_mb"), ("bytes", "size_bytes")))
        rows[name] = (
            name,
            str(pick(record, "model", "space", "embedding_model", default=MISSING)),
            fmt_count(pick(record, "dim", "dimension")),
            fmt_count(pick(record, "count", "records", "items", "vectors")),
            size + _scan(record),
        )
    return rows


def _scan(record: Mapping[str, Any]) -> str:
    """ " · float32", " · bits+rescore 96", " · int8+rescore, calibrating", or "" unknown."""
    scan = record.get("index_scan")
    if not scan:
        return ""
    budget = record.get("bit_budget")
    return (
        f" · {scan}"
        + (f" {budget}" if budget else "")
        + (", calibrating" if record.get("calibrating") else "")
    )


def projector_rows(section: Any) -> dict[str, Row]:
    """projector -> (name, method, top-1 in domain, top-1 out of domain, uses, proxied, agreement).

    Top-1 is the projector's held-out fidelity; agreement is the gate's running estimate.
    """
    rows: dict[str, Row] = {}
    for record in records(section, "projectors"):
        source = pick(record, "source", "from", "src")
        target = pick(record, "target", "to", "dst")
        fallback = f"{source}->{target}" if source or target else "?"
        name = str(pick(record, "name", "id", default=fallback))
        rows[name] = (
            name,
            str(pick(record, "method", "kind", default=MISSING)),
            fmt_float(
                pick(
                    record,
                    "top1_in_domain",
                    "top1",
                    "top_1",
                    "fidelity.top1_in_domain",
                    "fidelity.top1",
                    "fidelity.top_1",
                ),
                3,
            ),
            fmt_float(pick(record, "top1_out_of_domain", "fidelity.top1_out_of_domain"), 3),
            fmt_count(pick(record, "projections", "uses", "count")),
            fmt_count(pick(record, "proxied", "fallbacks")),
            fmt_float(
                pick(record, "agreement_recent", "agreement", "agreement_mean", "mean_agreement"),
                3,
            ),
        )
    # Pairs through the hub, from the last `align report`: top-1 in and out of domain and
    # the route's gate AUC (over the held-out sets).
    coherence = section.get("coherence") if isinstance(section, Mapping) else None
    for pair, figures in (coherence or {}).items():
        if pair not in rows and isinstance(figures, Mapping):
            kind = "via hub" if pair.count("->") > 1 else "hub leg"
            if figures.get("gate_auc") is not None:
                kind += f", gate AUC {fmt_float(figures['gate_auc'], 2)}"
            rows[pair] = (
                pair,
                kind,
                fmt_float(figures.get("in"), 3),
                fmt_float(figures.get("out"), 3),
                MISSING,
                MISSING,
                MISSING,
            )
    # Fits, refits, pair and hub builds running now: their latest step in the method column.
    running = section.get("running") if isinstance(section, Mapping) else None
    for i, work in enumerate(running or []):
        if isinstance(work, Mapping):
            pair = "->".join(str(work[k]) for k in ("from", "to") if work.get(k)) or "hub"
            doing = _ALIGN_WORK.get(str(work.get("op")), str(work.get("op")))
            name = f"{pair} ({doing})"
            rows[f"running:{i}"] = (name, str(work.get("step", MISSING)), *[MISSING] * 5)
    return rows


_ALIGN_WORK = {"fit": "fitting", "refit": "refitting", "pairs": "pairing", "hub": "building"}


def peer_rows(section: Any) -> dict[str, Row]:
    """peer -> (name, state, endpoint, last seen, services; for a peer that is not up, why)."""
    rows: dict[str, Row] = {}
    for record in records(section, "peers", "links"):
        endpoint = str(pick(record, "endpoint", "address", "url", default=MISSING))
        name = str(pick(record, "name", "id", default=endpoint))
        services = pick(record, "services", "capabilities", default=[])
        if isinstance(services, Mapping):
            services = list(services)
        listed = ", ".join(str(s) for s in services) if isinstance(services, Iterable) else ""
        state = str(pick(record, "state", "status", default=MISSING))
        rows[name] = (
            name,
            state,
            endpoint,
            fmt_float(pick(record, "last_seen_s", "age_s", "seen_s")),
            _down_reason(record, state) or listed or MISSING,
        )
    return rows


def grid_rows(section: Any) -> dict[str, Row]:
    """Grid members as peer rows: (name (grid), state, endpoint, last seen, load and models)."""
    rows: dict[str, Row] = {}
    for record in records(section, "members"):
        name = str(pick(record, "name", default=MISSING))
        load = record.get("load") if isinstance(record.get("load"), Mapping) else {}
        models = load.get("models") if isinstance(load.get("models"), Mapping) else {}
        queue = sum(int(m.get("queue", 0)) for m in models.values() if isinstance(m, Mapping))
        free = sum(
            int(m.get("slots", 0)) - int(m.get("busy", 0))
            for m in models.values()
            if isinstance(m, Mapping)
        )
        offered = ", ".join(str(m) for m in record.get("models") or []) or "no models"
        state = str(pick(record, "state", default=MISSING))
        rows[f"grid:{name}"] = (
            f"{name} (grid)",
            state,
            str(pick(record, "endpoint", default=MISSING)),
            fmt_float(pick(record, "last_seen_s")),
            _down_reason(record, state)
            or f"queue {queue}, free slots {free if models else '-'}; {offered}",
        )
    return rows


def _down_reason(record: Mapping[str, Any], state: str) -> str:
    """Why a peer or member is not up, when it says (its services and load are stale then)."""
    error = record.get("error")
    return f"{state}: {error}" if state != "up" and error else ""


def signal_rows(section: Any) -> dict[str, Row]:
    """signal -> (kind, "signal", subject, triggered/calm, figures): the observer's NLL
    readings (one per model and adapter set) and every triggered signal, under the tuner's
    decisions; a signal a session's pin holds back says so."""
    rows: dict[str, Row] = {}
    held = section.get("held_by_pins", {}) if isinstance(section, Mapping) else {}
    for signal in records(section, "signals"):
        kind, subject = str(signal.get("kind", "?")), str(signal.get("subject", "?"))
        if kind != "nll" and not signal.get("triggered"):
            continue
        figures = signal.get("figures") if isinstance(signal.get("figures"), Mapping) else {}
        if kind == "nll":
            detail = (
                f"nll {fmt_float(figures.get('nll'), 2)} (median "
                f"{fmt_float(figures.get('median'), 2)}, limit {fmt_float(figures.get('limit'), 2)}"
                f", {figures.get('answers', '?')} answers)"
            )
        else:
            detail = str(signal.get("message") or MISSING)
        if f"{kind}:{subject}" in held:
            detail = f"held: pinned by a session; {detail}"
        rows[f"signal:{kind}:{subject}"] = (
            kind,
            "signal",
            subject,
            "triggered" if signal.get("triggered") else "calm",
            detail[:60] + ("..." if len(detail) > 60 else ""),
        )
    return rows


def tuner_rows(section: Any) -> dict[str, Row]:
    """decision -> (#id, action, subject, state, outcome): the tuner's latest decisions,
    open proposals first (apply them with `aether-box tuner apply ID`), then the signals
    (`signal_rows`)."""
    rows: dict[str, Row] = {}
    decisions = records(section, "recent")
    decisions.sort(key=lambda d: (d.get("state") != "proposed", -int(d.get("id", 0))))
    for record in decisions:
        ident = f"#{pick(record, 'id', default='?')}"
        outcome = str(pick(record, "outcome", default="") or "")
        rows[ident] = (
            ident,
            str(pick(record, "action", default=MISSING)),
            str(pick(record, "subject", default=MISSING)),
            str(pick(record, "state", default=MISSING)),
            outcome[:60] + ("..." if len(outcome) > 60 else "") or MISSING,
        )
    return {**rows, **signal_rows(section)}

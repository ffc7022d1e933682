"""Prometheus metrics: GET http://127.0.0.1:7747/metrics, read from the same report as `status`.

Nothing is counted twice: at each scrape the collector takes the status report on the event
loop (where the counters live, so it never sees them half-updated) and turns it into metric
families. prometheus-client's ProcessCollector adds the process's CPU seconds, memory and
open files.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any, ClassVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import anyio
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from aether_box.context import BoxContext
from aether_box.contract import StatusReporter
from aether_box.errors import ServiceUnavailable
from aether_box.monitor.settings import DEFAULT_METRICS_ADDRESS, MonitorSettings

__all__ = ["MetricsComponent", "StatusCollector"]

log = logging.getLogger(__name__)

PREFIX = "aether_box"
# A scrape waits this long for the event loop before it reports the box as not answering.
SCRAPE_TIMEOUT_S = 5.0
# How often the HTTP thread looks for a shutdown request: bounds how long stopping takes.
POLL_S = 0.2


class StatusCollector:
    """Turns a status report (see aether_box.status) into Prometheus metric families."""

    def __init__(self, read_report: Callable[[], dict[str, Any]]) -> None:
        self._read_report = read_report

    def collect(self) -> Iterator[Metric]:
        report = self._read_report()
        yield _gauge("up", "1 when the box has started every component", int(report["ready"]))
        yield _gauge("uptime_seconds", "Seconds since the box started", report["uptime_s"])
        yield _gauge("in_flight", "Requests being served now, all services", report["in_flight"])

        services = report["services"]
        requests = _counter("requests", "Requests answered, by service", ["service"])
        errors = _counter("request_errors", "Requests the box failed, by service", ["service"])
        client_errors = _counter(
            "request_client_errors", "Requests refused as the caller's mistake", ["service"]
        )
        cancelled = _counter("request_cancelled", "Requests cancelled before done", ["service"])
        queued = _gauge("queued", "Requests waiting for a worker", None, ["service"])
        busy = _gauge("service_in_flight", "Requests being served, by service", None, ["service"])
        workers = _gauge("workers", "Workers offering the service", None, ["service"])
        latency = _gauge(
            "request_latency_seconds",
            "Latency quantiles over the service's last 2,048 requests",
            None,
            ["service", "quantile"],
        )
        for name, svc in services.items():
            requests.add_metric([name], svc["requests"])
            errors.add_metric([name], svc["errors"])
            client_errors.add_metric([name], svc.get("client_errors", 0))
            cancelled.add_metric([name], svc.get("cancelled", 0))
            queued.add_metric([name], svc["queued"])
            busy.add_metric([name], svc["in_flight"])
            workers.add_metric([name], svc["workers"])
            for quantile, key in (("0.5", "p50_ms"), ("0.95", "p95_ms")):
                if svc.get(key) is not None:
                    latency.add_metric([name, quantile], svc[key] / 1000.0)
        yield from (requests, errors, client_errors, cancelled, queued, busy, workers, latency)

        rejected = _counter(
            "rejected",
            "Messages refused: by the bus (scope 'bus') or by a service",
            ["scope", "reason"],
        )
        for reason, count in report["rejected"].items():
            rejected.add_metric(["bus", reason], count)
        for name, svc in services.items():
            for reason, count in svc["rejected"].items():
                rejected.add_metric([name, reason], count)
        yield rejected
        groups = report.get("reply_groups", {})
        yield _counter(
            "reply_groups", "Groups of replies sent together (bus)", value=groups.get("groups", 0)
        )
        yield _counter(
            "grouped_replies", "Replies sent in groups (bus)", value=groups.get("replies", 0)
        )

        events = report["events"]
        yield _counter("events_published", "Events published", value=events["published"])
        dropped = _counter("events_dropped", "Events not published, by topic", ["topic"])
        for topic, count in events["dropped"].items():
            dropped.add_metric([topic], count)
        yield dropped
        yield from _model_families(report.get("models"))
        yield from _http_families(report.get("http"))
        yield from _grid_families(report.get("grid"))
        yield from _adapter_families(report.get("adapters"))
        yield from _tools_families(report.get("tools"), report.get("orchestrate"))
        yield from _tuner_families(report.get("tuner"))
        yield from _memory_families(report.get("memory"))
        yield from _align_families(report.get("align"))


def _align_families(section: dict[str, Any] | None) -> Iterator[Metric]:
    """Per route through the hub, from the last `align report`: top-1 per held-out set and
    its gate's AUC; per served projector, how many projections it made and proxied."""
    if not section:
        return
    top1 = _gauge(
        "align_route_top1", "Held-out top-1 of a route, by held-out set", None, ["route", "set"]
    )
    gate_auc = _gauge(
        "align_route_gate_auc",
        "AUC of a route's gate for finding the native top-1",
        None,
        ["route"],
    )
    for route, figures in (section.get("coherence") or {}).items():
        for short in ("in", "out", "far"):
            if figures.get(short) is not None:
                top1.add_metric([route, short], figures[short])
        if figures.get("gate_auc") is not None:
            gate_auc.add_metric([route], figures["gate_auc"])
    projections = _counter("align_projections", "Projections made, by projector", ["projector"])
    proxied = _counter(
        "align_proxied", "Projections the gate sent to the proxy, by projector", ["projector"]
    )
    for name, served in (section.get("projectors") or {}).items():
        projections.add_metric([name], served.get("projections", 0))
        proxied.add_metric([name], served.get("proxied", 0))
    yield from (top1, gate_auc, projections, proxied)


def _memory_families(section: dict[str, Any] | None) -> Iterator[Metric]:
    """Per memory collection: its records, its index's RAM and how searches scan it."""
    if not section:
        return
    vectors = _gauge("memory_records", "Records in the collection", None, ["collection"])
    index_bytes = _gauge(
        "memory_index_bytes", "RAM of the collection's search index", None, ["collection"]
    )
    budget = _gauge(
        "memory_bit_budget",
        "Candidates a sign-bit scan keeps for exact re-scoring (0: int8 or float32 scan)",
        None,
        ["collection"],
    )
    scans = _counter(
        "memory_searches",
        "Searches of the collection's in-memory index, by the first stage that served them "
        "(bits+rescore, int8+rescore or float32)",
        ["collection", "scan"],
    )
    for name, info in (section.get("collections") or {}).items():
        vectors.add_metric([name], info.get("count", 0))
        if info.get("index_mb") is not None:
            index_bytes.add_metric([name], info["index_mb"] * 2**20)
            budget.add_metric([name], info.get("bit_budget") or 0)
        for scan, count in (info.get("searches_by_scan") or {}).items():
            scans.add_metric([name, scan], count)
    yield from (vectors, index_bytes, budget, scans)
    cross = section.get("cross_model")
    if cross:
        searches = _counter(
            "memory_cross_model_searches",
            "Memory searches with another model's vector: projected, proxied (re-embedded "
            "natively: the gate said no, or no projector) or refused (recipe mismatch)",
            ["path"],
        )
        for path, count in cross.items():
            searches.add_metric([path], count)
        yield searches


def _grid_families(section: dict[str, Any] | None) -> Iterator[Metric]:
    """The grid's members (up, load) and where this box placed requests, and why."""
    if not section:
        return
    up = _gauge("grid_member_up", "1 while a grid member answers heartbeats", None, ["member"])
    queue = _gauge("grid_member_queue", "Requests queued on a member", None, ["member"])
    free = _gauge("grid_member_free_slots", "Free generation slots on a member", None, ["member"])
    for member in section.get("members", []):
        name = str(member.get("name"))
        up.add_metric([name], int(member.get("state") == "up"))
        models = (member.get("load") or {}).get("models") or {}
        queue.add_metric([name], sum(int(m.get("queue", 0)) for m in models.values()))
        free.add_metric(
            [name], sum(int(m.get("slots", 0)) - int(m.get("busy", 0)) for m in models.values())
        )
    placed = _counter(
        "grid_placements", "Requests placed by this box, by box and reason", ["box", "reason"]
    )
    for item in section.get("placements", []):
        placed.add_metric([str(item["box"]), str(item["reason"])], item["count"])
    failovers = _counter(
        "grid_failovers", "Placed requests whose box went down, by outcome", ["outcome"]
    )
    for outcome, count in (section.get("failovers") or {}).items():
        failovers.add_metric([outcome], count)
    yield from (up, queue, free, placed, failovers)


def _adapter_families(section: dict[str, Any] | None) -> Iterator[Metric]:
    """Per LoRA adapter: requests, tokens, speed and the fusion log's KL (its status section)."""
    if not section:
        return
    requests = _counter("adapter_requests", "Requests run with the adapter", ["adapter"])
    tokens = _counter("adapter_tokens", "Tokens generated with the adapter", ["adapter"])
    speed = _gauge(
        "adapter_tokens_per_second", "Decode speed of the last long request", None, ["adapter"]
    )
    kl = _gauge(
        "adapter_kl_nats",
        "Fusion probe: KL(base || adapted) per token, mean and p95",
        None,
        ["adapter", "stat"],
    )
    top1 = _gauge("adapter_top1_agreement", "Fusion probe: top-1 agreement", None, ["adapter"])
    pruned = _gauge("adapter_pruned", "1 when requests are refused it unforced", None, ["adapter"])
    for a in section.get("adapters", []):
        name = a["name"]
        requests.add_metric([name], a["requests"])
        tokens.add_metric([name], a["tokens"])
        if a.get("tokens_per_s") is not None:
            speed.add_metric([name], a["tokens_per_s"])
        for stat in ("kl_mean", "kl_p95"):
            if a.get(stat) is not None:
                kl.add_metric([name, stat.removeprefix("kl_")], a[stat])
        if a.get("top1") is not None:
            top1.add_metric([name], a["top1"])
        pruned.add_metric([name], int(bool(a.get("pruned"))))
    yield from (requests, tokens, speed, kl, top1, pruned)


def _tools_families(
    tools: dict[str, Any] | None, orchestrate: dict[str, Any] | None
) -> Iterator[Metric]:
    """The tools service's and the orchestrator's counters (their status sections)."""
    if tools:
        available = _gauge("tools", "Tools reachable now, by source", None, ["source"])
        for source, count in tools["by_source"].items():
            available.add_metric([source], count)
        calls = _counter("tool_calls", "Tool calls answered, by tool", ["tool"])
        for tool, count in tools["calls_by_tool"].items():
            calls.add_metric([tool], count)
        failures = _counter("tool_failures", "Tool calls that failed, by error code", ["code"])
        for code, count in tools["failures"].items():
            failures.add_metric([code], count)
        yield from (available, calls, failures)
    if orchestrate:
        yield _counter("orchestrate_runs", "Tasks orchestrated", value=orchestrate["runs"])
        yield _counter("orchestrate_steps", "Tool steps taken", value=orchestrate["steps"])


def _tuner_families(section: dict[str, Any] | None) -> Iterator[Metric]:
    """The tuner's decisions per action and state, and the signals it watches."""
    if not section:
        return
    actions = _counter(
        "tuner_actions",
        "Tuner decisions reaching each state (proposed, applied, rejected, ...), by action",
        ["action", "state"],
    )
    for action, states in section.get("counts", {}).items():
        for state, count in states.items():
            actions.add_metric([action, state], count)
    yield actions
    yield _gauge("tuner_running", "Tuner actions in progress", len(section.get("running", {})))
    triggered = _gauge(
        "signal_triggered", "1 while an observer signal is triggered", None, ["kind", "subject"]
    )
    for signal in section.get("signals", []):
        triggered.add_metric([signal["kind"], signal["subject"]], int(signal["triggered"]))
    yield triggered


# Per loaded generation model: (metric, help, scheduler figure, is a counter).
_SCHEDULER_FIGURES = (
    ("model_slots", "Sequences the model's scheduler serves at once", "slots", False),
    ("model_slots_busy", "Slots generating or reading a prompt now", "slots_busy", False),
    ("model_queue", "Requests waiting for a free slot", "queue", False),
    ("model_kv_cells", "KV cache cells of the model's context", "kv_cells", False),
    ("model_kv_cells_used", "KV cache cells holding tokens now", "kv_cells_used", False),
    ("model_prompt_tokens", "Prompt tokens asked for", "prompt_tokens", True),
    (
        "model_prompt_tokens_reused",
        "Prompt tokens found in a slot's KV (or a saved state), not read again",
        "prompt_tokens_reused",
        True,
    ),
    ("model_generated_tokens", "Tokens generated", "generated_tokens", True),
    (
        "model_tokens_per_second",
        "Aggregate tokens/s of the model's recent decode steps, all sequences",
        "aggregate_tokens_per_s",
        False,
    ),
    (
        "model_time_to_first_token_seconds",
        "Median time to first token over recent requests",
        "ttft_ms",
        False,
    ),
)


def _model_families(section: dict[str, Any] | None) -> Iterator[Metric]:
    """Each loaded generation model's scheduler figures, labelled by model."""
    if not section:
        return
    loaded = [m for m in section.get("loaded", []) if m.get("scheduler")]
    for name, doc, key, is_counter in _SCHEDULER_FIGURES:
        family = (
            _counter(name, doc, ["model"]) if is_counter else _gauge(name, doc, None, ["model"])
        )
        for model in loaded:
            value = model["scheduler"].get(key)
            if value is not None:
                scale = 1000.0 if key == "ttft_ms" else 1.0
                family.add_metric([model["name"]], value / scale)
        yield family
    copies = _gauge(
        "model_baked_copies", "Hot adapter sets served from a baked copy, by state", None,
        ["model", "state"],
    )  # fmt: skip
    baked_memory = _gauge(
        "model_baked_memory_bytes", "Memory of the model's baked adapter copies", None, ["model"]
    )
    for model in loaded:
        states: dict[str, int] = {}
        for copy in model["scheduler"].get("baked", []):
            states[copy["state"]] = states.get(copy["state"], 0) + 1
        for state, count in states.items():
            copies.add_metric([model["name"], state], count)
        if "baked_mb" in model["scheduler"]:
            baked_memory.add_metric([model["name"]], model["scheduler"]["baked_mb"] * 2**20)
    yield from (copies, baked_memory)
    # The NLL signal's inputs, per adapter set ("" for the model alone).
    nll = _gauge(
        "model_nll",
        "Mean per-token NLL (nats) of the latest scored answer, by model and adapter set",
        None,
        ["model", "adapter"],
    )
    answers = _counter(
        "model_nll_answers", "Answers scored for the NLL signal", ["model", "adapter"]
    )
    for model in loaded:
        for reading in (model.get("nll") or {}).values():
            labels = [model["name"], reading["adapters"]]
            nll.add_metric(labels, reading["last"])
            answers.add_metric(labels, reading["answers"])
    yield from (nll, answers)
    memory = _gauge(
        "model_memory_bytes",
        "Memory each loaded model instance holds (the tuner's memory-pressure figure)",
        None,
        ["model", "role"],
    )
    for model in section.get("loaded", []):
        if model.get("memory_mb") is not None:
            memory.add_metric([model["name"], model["role"]], model["memory_mb"] * 2**20)
    yield memory


def _http_families(section: dict[str, Any] | None) -> Iterator[Metric]:
    """The HTTP gateway's counters (its status section), per route and per key name."""
    if not section:
        return
    for label, counts in (("route", section.get("routes", {})), ("key", section.get("keys", {}))):
        requests = _counter(f"http_{label}_requests", f"HTTP requests, by {label}", [label])
        errors = _counter(f"http_{label}_errors", f"HTTP 5xx answers, by {label}", [label])
        client_errors = _counter(
            f"http_{label}_client_errors",
            f"HTTP 4xx answers (and clients gone before the answer), by {label}",
            [label],
        )
        latency = _gauge(
            f"http_{label}_latency_seconds",
            f"HTTP latency quantiles over the last 2,048 requests, by {label}",
            None,
            [label, "quantile"],
        )
        for name, c in counts.items():
            requests.add_metric([name], c["requests"])
            errors.add_metric([name], c["errors"])
            client_errors.add_metric([name], c["client_errors"])
            for quantile, key in (("0.5", "p50_ms"), ("0.95", "p95_ms")):
                if c.get(key) is not None:
                    latency.add_metric([name, quantile], c[key] / 1000.0)
        yield from (requests, errors, client_errors, latency)


class MetricsComponent:
    """Serves /metrics over HTTP, from a thread of its own, while the box runs."""

    name: ClassVar[str] = "metrics"
    settings_class: ClassVar[type | None] = MonitorSettings

    def __init__(self, ctx: BoxContext) -> None:
        self.settings = ctx.config.get(MonitorSettings)
        self.address: str | None = None  # what it is bound to, once serving

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        if not self.settings.metrics_address:
            task_status.started()
            return
        host, port = self.settings.host_and_port()
        status = ctx.get(StatusReporter)
        if status is None:
            raise ServiceUnavailable("metrics need the status component, which is not running")
        loop = asyncio.get_running_loop()

        async def report() -> dict[str, Any]:
            return status.report()

        def read_report() -> dict[str, Any]:
            # Called from the HTTP thread: the report is taken on the loop, between messages.
            return asyncio.run_coroutine_threadsafe(report(), loop).result(SCRAPE_TIMEOUT_S)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(read_report))
        ProcessCollector(namespace=PREFIX, registry=registry)
        # The default port taken (another box here) moves to a free one, shown in status.
        ports = [port, 0] if self.settings.metrics_address == DEFAULT_METRICS_ADDRESS else [port]
        try:
            server = _bind_first(host, ports, make_wsgi_app(registry))
        except OSError as exc:
            # Metrics are for watching the box, never a reason for it not to run.
            log.warning(
                "metrics not served: cannot bind %s (%s); set monitor.metrics_address to a "
                'free host:port, or "" to turn metrics off',
                self.settings.metrics_address,
                exc,
            )
            task_status.started()
            return
        thread = threading.Thread(
            target=server.serve_forever, args=(POLL_S,), name="metrics-http", daemon=True
        )
        thread.start()
        self.address = (
            f"[{host}]:{server.server_port}" if ":" in host else f"{host}:{server.server_port}"
        )
        log.info("metrics on http://%s/metrics", self.address)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):  # stopping waits for the thread's next poll
                await anyio.to_thread.run_sync(server.shutdown)
            server.server_close()
            self.address = None

    def status_section(self) -> dict[str, Any] | None:
        """The "metrics" section of `status`: where /metrics is served (absent when off)."""
        return None if self.address is None else {"url": f"http://{self.address}/metrics"}


def _bind_first(host: str, ports: list[int], app: Any) -> WSGIServer:
    """A server on the first of `ports` that is free (the last one's error if none is)."""
    *earlier, last = ports
    for port in earlier:
        try:
            return _make_server(host, port, app)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            log.warning("metrics port %d is taken (another box?); picking a free one", port)
    return _make_server(host, last, app)


def _make_server(host: str, port: int, app: Any) -> WSGIServer:
    server_class = _Server6 if ":" in host else _Server
    return make_server(host, port, app, server_class, handler_class=_QuietHandler)


class _Server(ThreadingMixIn, WSGIServer):
    """Each scrape in its own daemon thread: a stalled client never holds up a stop."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """Scrapes are not worth a line on stderr each."""

    timeout = SCRAPE_TIMEOUT_S  # a client that sends nothing is dropped

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _gauge(
    name: str, doc: str, value: float | None = None, labels: list[str] | None = None
) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value, labels=labels)


def _counter(
    name: str, doc: str, labels: list[str] | None = None, *, value: float | None = None
) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value, labels=labels)

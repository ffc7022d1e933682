"""The component contract: in-process calls count like socket requests, services have owners,
components find each other by interface."""

from __future__ import annotations

import anyio
from fixtures_box import wait_for
from fixtures_engines import engines_box
from test_monitor_metrics import scrape

from aether_box.contract import ModelCatalog, PeerDirectory, StatusReporter
from aether_box.engines.services import EnginesComponent
from aether_box.federation.service import FederationComponent
from aether_box.status import StatusComponent


def test_in_process_llm_and_embed_calls_show_in_status_and_metrics(models_dir):
    with engines_box(models_dir) as running, running.client(timeout=120) as client:
        # The client never calls llm or embed itself: memory, sessions and the router do.
        client.request("memory", {"op": "create", "collection": "notes", "model": "minilm"})
        client.request("memory", {"op": "add", "collection": "notes", "texts": ["a cat", "a dog"]})
        session = client.request("session", {"op": "create", "model": "smollm2"})["session"]
        client.request(
            "session",
            {"op": "say", "session": session, "text": "Hi", "max_tokens": 2, "temperature": 0},
        )
        report = client.status()
        services = report["services"]
        assert services["embed"]["requests"] == 2  # the dimension probe, then the texts
        assert services["llm"]["requests"] == 1
        assert services["embed"]["p50_ms"] > 0 and services["llm"]["errors"] == 0
        samples = scrape(report["metrics"]["url"])
    assert samples[("aether_box_requests_total", (("service", "embed"),))] == 2
    assert samples[("aether_box_requests_total", (("service", "llm"),))] == 1
    assert report["components"]["engines"]["services"] == ["embed", "llm"]


def test_components_are_found_by_interface_never_by_name(box):
    found = box.portal.call(
        lambda: (
            box.box.get(StatusReporter),
            box.box.get(ModelCatalog),
            box.box.get(PeerDirectory),
        )
    )
    assert [type(c) for c in found] == [StatusComponent, EnginesComponent, FederationComponent]
    owned = box.box.broker.owned_by("memory")
    assert owned == {"memory"}


def test_in_process_calls_wait_for_the_limiter_and_count_in_flight(box):
    gate = box.portal.call(anyio.Event)
    started: list[int] = []

    async def held(request):
        started.append(request.body["n"])
        await gate.wait()
        return {"n": request.body["n"]}

    broker = box.box.broker
    box.portal.call(lambda: broker.add_service("held", held, concurrency=1, owner="test"))
    calls = [box.portal.start_task_soon(broker.call, "held", {"n": n}) for n in range(2)]
    with box.client(timeout=5) as client:
        wait_for(lambda: client.status()["services"]["held"]["in_flight"] == 2, 5, "2 in flight")
        assert started == [0]  # the limiter holds the second call back, as for a socket's
        box.portal.call(gate.set)
        assert [call.result(5) for call in calls] == [{"n": 0}, {"n": 1}]
        stats = client.status()["services"]["held"]
    assert stats["requests"] == 2 and stats["in_flight"] == 0 and stats["errors"] == 0
    assert box.box.broker.owned_by("test") == {"held"}


def test_every_registered_component_keeps_the_contract():
    import inspect

    from aether_box.box import load_components
    from aether_box.plugins import registry

    for cls in load_components():
        assert isinstance(cls.name, str) and cls.name, cls
        settings = cls.settings_class
        assert settings is None or settings in registry().sections().values(), cls
        assert list(inspect.signature(cls.serve).parameters)[:2] == ["self", "ctx"], cls
        assert inspect.iscoroutinefunction(cls.serve), cls

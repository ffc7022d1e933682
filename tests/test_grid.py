"""The grid on real boxes: three members in network namespaces (or loopback with CURVE
forced on; the output says which), joined through one member, placing requests by expected
wait, failing over when a member is killed, searching memory on all, revoking a member."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_box import wait_for
from fixtures_grid import GridBox, Network, admit

from aether_box.cli import cli
from aether_box.client import ServiceUnavailable
from aether_box.monitor.metrics import StatusCollector

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # a continuation that rarely ends early


def grid_cli(box: GridBox, *args: str):
    return CliRunner().invoke(cli, ["--data-dir", str(box.data_dir), "grid", *args])


def up(box: GridBox, *names: str) -> bool:
    members = box.members()
    return all(members.get(n, {}).get("state") == "up" for n in names)


@pytest.fixture(scope="module")
def grid(models_dir: Path, tmp_path_factory):
    """g1 (only minilm), g2 and g3 (smollm2 and minilm), joined into one grid through g1
    and g2; s4 is started too, with keys no member admits."""
    network = Network(4)
    print(network.describe())
    only_minilm = tmp_path_factory.mktemp("minilm-only")
    (only_minilm / "minilm").symlink_to(models_dir / "minilm")
    boxes = [
        GridBox(network, 1, "g1", only_minilm),
        GridBox(network, 2, "g2", models_dir),
        GridBox(network, 3, "g3", models_dir),
        GridBox(network, 4, "s4", models_dir),
    ]
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(GridBox.start, boxes))
        g1, g2, g3, _ = boxes
        admit(g1, g2)  # the one step by hand for each newcomer: its key on the member it joins
        admit(g2, g3)
        joined = grid_cli(g2, "join", _endpoint(g1), "--server-key", str(g1.key_file))
        assert joined.exit_code == 0, joined.output
        joined = grid_cli(g3, "join", _endpoint(g2), "--server-key", str(g2.key_file))
        assert joined.exit_code == 0, joined.output
        yield network, boxes
    finally:
        for box in boxes:
            box.stop()
        network.close()
        for box in boxes:
            box.remove()


def _endpoint(box: GridBox) -> str:
    with box.client(timeout=10) as client:
        return client.request("grid", {"op": "status"})["endpoint"]


def test_joining_one_member_links_every_member_both_ways_over_curve(grid):
    network, (g1, g2, g3, _) = grid
    print(network.describe())
    for box, others in ((g1, ("g2", "g3")), (g2, ("g1", "g3")), (g3, ("g1", "g2"))):
        wait_for(lambda box=box, others=others: up(box, *others), 10, f"{box.name} sees all")
        members = box.members()
        assert sorted(members) == sorted(others)
        assert all(m["curve"] for m in members.values())
    # Capabilities were pushed: g3 knows g1 has only minilm, and g1 knows g2's models.
    assert g3.members()["g1"]["models"] == ["minilm"]
    assert {"smollm2", "minilm"} <= set(g1.members()["g2"]["models"])
    shown = grid_cli(g1, "status")
    assert shown.exit_code == 0 and "g2" in shown.output and "up" in shown.output
    summary = CliRunner().invoke(cli, ["--data-dir", str(g1.data_dir), "status"])
    assert "grid: g1 with g2 (up), g3 (up)" in summary.output
    with g1.client(timeout=10) as client:
        assert client.status()["grid"]["name"] == "g1"
        assert client.request("g3/echo", {"hop": 1}) == {"hop": 1}  # members' services too


def test_a_box_whose_key_no_member_admits_gets_nothing(grid):
    _, (g1, _, _, s4) = grid
    refused = grid_cli(s4, "join", _endpoint(g1), "--server-key", str(g1.key_file))
    assert refused.exit_code == 1
    assert "keys authorize" in refused.output
    assert "s4" not in g1.members()
    assert s4.members() == {}


def test_requests_go_to_the_box_with_the_shortest_expected_wait(grid):
    _, (_, g2, _, _) = grid

    def chat(i: int) -> dict:
        with g2.client(timeout=120) as client:
            body = {"op": "complete", "model": "smollm2", "prompt": COUNTING, "max_tokens": 24}
            return client.request("llm", {**body, "temperature": 0})["grid"]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        placed = list(pool.map(chat, range(4)))
    boxes = {p["box"] for p in placed}
    assert boxes == {"g2", "g3"}, placed  # busy here: the next one goes to the idle member
    assert {p["reason"] for p in placed} & {"tie_local", "shortest_wait"}
    assert all(p["why"] for p in placed)
    with g2.client(timeout=10) as client:
        report = client.status()
    counted = {(p["box"], p["reason"]) for p in report["grid"]["placements"]}
    assert any(box == "g3" for box, _ in counted)
    families = {f.name: f for f in StatusCollector(lambda: report).collect()}
    placed = families["aether_box_grid_placements"].samples
    assert {s.labels["box"] for s in placed} == {"g2", "g3"}
    up = {s.labels["member"]: s.value for s in families["aether_box_grid_member_up"].samples}
    assert up == {"g1": 1, "g3": 1}


def test_grid_memory_search_merges_three_collections(grid):
    _, (g1, g2, g3, _) = grid
    docs = {
        g1: ["the cat sleeps on the sofa", "tax forms are due in april"],
        g2: ["a kitten naps in the sun", "the train leaves at noon"],
        g3: ["cats purr when they are content", "stock prices fell today"],
    }
    for box, texts in docs.items():
        with box.client(timeout=120) as client:
            client.request("memory", {"op": "create", "collection": "notes", "model": "minilm"})
            client.request("memory", {"op": "add", "collection": "notes", "texts": texts})
    with g1.client(timeout=120) as client:
        body = {"op": "search", "collection": "notes", "text": "sleepy cats", "k": 3}
        reply = client.request("memory", {**body, "scope": "grid"})
    assert reply["partial"] is False
    assert {m: s["state"] for m, s in reply["members"].items()} == {
        "g1": "answered",
        "g2": "answered",
        "g3": "answered",
    }
    texts = [r["text"] for r in reply["results"]]
    assert sorted(texts) == sorted(
        [
            "the cat sleeps on the sofa",
            "a kitten naps in the sun",
            "cats purr when they are content",
        ]
    )
    assert {r["box"] for r in reply["results"]} == {"g1", "g2", "g3"}
    scores = [r["score"] for r in reply["results"]]
    assert scores == sorted(scores, reverse=True)


def test_a_killed_member_is_down_within_a_second_its_request_fails_over_and_it_rejoins(grid):
    _, (g1, g2, g3, _) = grid

    def long_completion() -> dict:
        with g1.client(timeout=120) as client:
            body = {"op": "complete", "model": "smollm2", "prompt": COUNTING, "max_tokens": 160}
            return client.request("llm", body)

    def serving() -> GridBox | None:
        for box in (g2, g3):
            with box.client(timeout=10) as client:
                if client.status()["services"]["llm"]["in_flight"]:
                    return box
        return None

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(long_completion)
        wait_for(lambda: serving() is not None, 30, "the request running on a member")
        victim = serving()
        assert victim is not None
        survivor = g3 if victim is g2 else g2
        victim.kill()
        killed = time.monotonic()
        wait_for(lambda: g1.members()[victim.name]["state"] == "down", 5, "g1 sees it down")
        noticed = time.monotonic() - killed
        wait_for(lambda: survivor.members()[victim.name]["state"] == "down", 5, "the other sees it")
        noticed_too = time.monotonic() - killed
        reply = pending.result(timeout=120)
    print(
        f"member {victim.name} killed: down on g1 after {noticed:.3f} s, on {survivor.name} "
        f"after {noticed_too:.3f} s (load {os.getloadavg()})"
    )
    assert noticed < 1.0 and noticed_too < 1.0
    assert reply["grid"]["box"] == survivor.name and reply["grid"]["reason"] == "failover"
    assert reply["text"]
    # Grid search while it is down: a partial result, and it says who did not answer.
    with g1.client(timeout=30) as client:
        body = {"op": "search", "collection": "notes", "text": "cats", "k": 3, "scope": "grid"}
        partial = client.request("memory", body)
    assert partial["partial"] is True
    assert partial["members"][victim.name]["state"] in ("down", "timed out")
    victim.start()  # it says hello to the members it knows: back in the grid
    wait_for(lambda: up(g1, victim.name) and up(victim, "g1", survivor.name), 30, "rejoined")


def test_leave_then_join_again_then_revoke_cuts_a_member_off_at_once(grid):
    _, (g1, g2, g3, _) = grid
    left = grid_cli(g3, "leave")
    assert left.exit_code == 0, left.output
    assert g3.members() == {}
    wait_for(lambda: "g3" not in g1.members() and "g3" not in g2.members(), 5, "g3 forgotten")
    again = grid_cli(g3, "join", _endpoint(g2), "--server-key", str(g2.key_file))
    assert again.exit_code == 0, again.output
    wait_for(lambda: up(g1, "g3") and up(g3, "g1", "g2"), 10, "g3 back in the grid")

    revoked = grid_cli(g1, "revoke", "g3")
    assert revoked.exit_code == 0, revoked.output
    assert "g3" not in g1.members()  # at once, in the reply's wake
    wait_for(lambda: "g3" not in g2.members(), 2, "g2 drops g3 too")
    wait_for(lambda: not up(g3, "g1") and not up(g3, "g2"), 5, "g3 cut off")
    with g1.client(timeout=10) as client:
        assert client.status()["grid"]["revoked"] == ["g3"]
        # What g3 still sends on the connection it had is dropped, not served.
        wait_for(lambda: client.status()["rejected"].get("revoked", 0) > 0, 5, "g3's dropped")


def test_a_stream_that_already_sent_tokens_fails_with_what_was_sent(grid):
    _, (g1, g2, _, _) = grid  # g3 is revoked: g2 is the only member with smollm2
    body = {
        "op": "complete",
        "model": "smollm2",
        "prompt": COUNTING,
        "max_tokens": 200,
        "stream": True,
    }
    tokens = []
    with g1.client(timeout=60) as client, pytest.raises(ServiceUnavailable) as failed:
        for part in client.stream("llm", body):
            if "token" in part:
                tokens.append(part["token"])
                if len(tokens) == 3:
                    g2.kill()
    assert "text so far" in str(failed.value)
    assert "".join(tokens[:3]) in str(failed.value)

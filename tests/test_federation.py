"""Federation between real boxes: link, forward (streams and errors too), go down, come back."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zmq.auth
from click.testing import CliRunner
from fixtures_box import BoxInThread, wait_for
from fixtures_engines import engines_box
from test_bus_broker import Probe, add_service

from aether_box.bus.security import AUTHORIZED_DIR, init_keys, keys_dir
from aether_box.cli import cli
from aether_box.client import BadRequest, NotFound, ServiceUnavailable
from aether_box.federation.service import FederationComponent

FAST = {"federation": {"refresh_s": 0.3}}


@pytest.fixture
def peer(tmp_path_factory):
    """The box being linked to."""
    running = BoxInThread(tmp_path_factory.mktemp("peer"))
    yield running
    running.stop()


def peers(client) -> dict[str, dict]:
    return {p["name"]: p for p in client.status()["peers"]["peers"]}


def link(client, endpoint: str, name: str, **extra) -> dict:
    body = {"op": "link", "endpoint": endpoint, "name": name, **extra}
    return client.request("federation", body)["linked"]


def test_a_linked_peer_serves_here_with_streams_errors_and_arrays(data_dir, peer):
    add_service(peer, "probe", Probe())
    here = BoxInThread(data_dir, FAST)
    try:
        with here.client(timeout=10) as client:
            linked = link(client, peer.tcp_endpoint, "lab")
            assert linked["state"] == "up" and "probe" in linked["services"]
            assert "federation" not in linked["services"]  # managing links stays local
            vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
            reply = client.request("lab/echo", {"v": vectors, "n": 1})
            np.testing.assert_array_equal(reply["v"], vectors)
            assert reply["n"] == 1
            assert list(client.stream("lab/probe", {"count": 3})) == [
                {"i": 0},
                {"i": 1},
                {"i": 2},
                {"done": 3},
            ]
            with pytest.raises(BadRequest, match="you asked me to fail"):
                client.request("lab/probe", {"count": 1, "fail": True})
            with pytest.raises(BadRequest, match="already linked"):
                link(client, peer.tcp_endpoint, "lab")
            # Unlinked and linked again at once: the new link serves, also once the old one
            # has withdrawn its services.
            federation = here.box.get(FederationComponent)
            old = federation.links["lab"]
            client.request("federation", {"op": "unlink", "name": "lab"})
            assert link(client, peer.tcp_endpoint, "lab")["state"] == "up"
            here.portal.call(old.closed.wait)
            assert client.request("lab/echo", {"again": 1}) == {"again": 1}
        with peer.client(timeout=10) as at_peer:
            assert at_peer.status()["services"]["probe"]["requests"] == 2
    finally:
        here.stop()


def test_links_survive_a_restart_and_a_peer_that_goes_away(data_dir, tmp_path_factory):
    peer_dir = tmp_path_factory.mktemp("peer")
    peer = BoxInThread(peer_dir)
    here = BoxInThread(data_dir, FAST)
    try:
        with here.client(timeout=10) as client:
            link(client, peer.tcp_endpoint, "lab")
        endpoint = peer.tcp_endpoint
        here.stop()
        here = BoxInThread(data_dir, FAST)  # the link is read back from peers.toml
        with here.client(timeout=10) as client:
            wait_for(lambda: peers(client)["lab"]["state"] == "up", 10, "the link up")
            assert client.request("lab/echo", {"a": 1}) == {"a": 1}
            peer.stop()
            wait_for(lambda: peers(client)["lab"]["state"] == "down", 10, "the link down")
            with pytest.raises(ServiceUnavailable, match="peer lab is unreachable"):
                client.request("lab/echo", {"a": 1})
            # The peer comes back on the same port: the link notices by itself.
            port = endpoint.rsplit(":", 1)[1]
            peer = BoxInThread(peer_dir, {"bus": {"endpoints": [f"tcp://127.0.0.1:{port}"]}})
            wait_for(lambda: peers(client)["lab"]["state"] == "up", 10, "the link up")
            assert client.request("lab/echo", {"a": 2}) == {"a": 2}
            assert client.request("federation", {"op": "unlink", "name": "lab"}) == {
                "unlinked": "lab"
            }
            assert "lab" not in peers(client)
            assert "lab/echo" not in client.status()["services"]
    finally:
        here.stop()
        peer.stop()


def test_curve_peers_admit_only_the_boxes_they_authorised(tmp_path_factory):
    peer_dir, here_dir, stranger_dir = (tmp_path_factory.mktemp(n) for n in ("p", "h", "s"))
    for d in (peer_dir, here_dir, stranger_dir):
        init_keys(d)
    # The peer admits `here` by its box key; `stranger` has keys the peer never saw.
    shutil.copy(keys_dir(here_dir) / "server.key", keys_dir(peer_dir) / AUTHORIZED_DIR / "h.key")
    peer = BoxInThread(peer_dir, {"bus": {"curve": "on"}})
    peer_key = zmq.auth.load_certificate(keys_dir(peer_dir) / "server.key")[0].decode()
    here = BoxInThread(here_dir, FAST)
    stranger = BoxInThread(stranger_dir, FAST)
    try:
        with here.client(timeout=10) as client:
            linked = link(client, peer.tcp_endpoint, "lab", server_key=peer_key)
            assert linked["state"] == "up" and linked["curve"] is True
            assert client.request("lab/echo", {"ok": 1}) == {"ok": 1}
        with stranger.client(timeout=10) as client:
            linked = link(client, peer.tcp_endpoint, "lab", server_key=peer_key)
            assert linked["state"] == "down"
            assert "keys/authorized" in linked["error"]
            with pytest.raises(NotFound):  # never reached: none of its services are known
                client.request("lab/echo", {"ok": 1})
    finally:
        for running in (here, stranger, peer):
            running.stop()


def test_the_link_command_links_lists_and_removes(data_dir, peer):
    here = BoxInThread(data_dir, FAST)
    runner = CliRunner()
    base = ["--data-dir", str(data_dir)]
    try:
        made = runner.invoke(cli, [*base, "link", peer.tcp_endpoint, "--name", "lab"])
        assert made.exit_code == 0, made.output
        assert "lab/echo" in made.output and "up" in made.output
        listed = runner.invoke(cli, [*base, "link"])
        assert "lab" in listed.output
        bad = runner.invoke(cli, [*base, "link", "http://x", "--name", "web"])
        assert bad.exit_code == 1 and "tcp://host:port" in bad.output
        command = runner.invoke(cli, [*base, "link", "list"])  # a subcommand it does not have
        assert command.exit_code == 2 and "`aether-box link` alone lists" in command.output
        removed = runner.invoke(cli, [*base, "link", "--remove", "lab"])
        assert removed.exit_code == 0 and "unlinked lab" in removed.output
        empty = runner.invoke(cli, [*base, "link"])
        assert "no linked peers" in empty.output
    finally:
        here.stop()


def test_a_model_this_box_lacks_is_served_by_a_peer_that_has_it(data_dir, models_dir):
    with engines_box(models_dir) as lab:  # has the kit; `here` has no models at all
        empty = data_dir / "no-models"
        empty.mkdir()
        here = BoxInThread(data_dir, {**FAST, "models": {"dir": str(empty)}})
        try:
            with here.client(timeout=120) as client:
                assert "minilm" in link(client, lab.tcp_endpoint, "lab")["models"]
                vectors = client.embed("minilm", ["a cat", "a dog"])
                assert vectors.shape == (2, 384)
                pieces = list(
                    client.chat_stream(
                        "smollm2",
                        [{"role": "user", "content": "Say hi"}],
                        max_tokens=8,
                        temperature=0,
                    )
                )
                assert len(pieces) >= 2 and "".join(pieces).strip()
                with pytest.raises(NotFound, match="not installed"):  # nowhere in the grid
                    client.embed("no-such-model", ["x"])
            with lab.client(timeout=10) as at_lab:
                served = at_lab.status()["services"]
            assert served["embed"]["requests"] >= 1 and served["llm"]["requests"] >= 1
        finally:
            here.stop()

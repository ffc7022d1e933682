"""Federation as a user meets it: keys given late, a box linked to itself, a peer twice."""

from __future__ import annotations

import pytest
import zmq.auth
from click.testing import CliRunner
from fixtures_box import BoxInThread, wait_for

from aether_box.bus.scopes import USE
from aether_box.bus.security import authorize_key, init_keys, keys_dir
from aether_box.cli import cli
from aether_box.client import BadRequest

FAST = {"federation": {"refresh_s": 0.3}}


def peers(client) -> dict[str, dict]:
    return {p["name"]: p for p in client.status()["peers"]["peers"]}


def link(client, endpoint: str, name: str, **extra) -> dict:
    body = {"op": "link", "endpoint": endpoint, "name": name, **extra}
    return client.request("federation", body)["linked"]


def test_a_link_comes_up_once_the_peer_authorises_this_box(tmp_path_factory):
    """The user links first and copies the key over after: the link must notice by itself."""
    peer_dir, here_dir = (tmp_path_factory.mktemp(n) for n in ("p", "h"))
    for d in (peer_dir, here_dir):
        init_keys(d)
    peer = BoxInThread(peer_dir, {"bus": {"curve": "on"}})
    here = BoxInThread(here_dir, FAST)
    peer_key = zmq.auth.load_certificate(keys_dir(peer_dir) / "server.key")[0].decode()
    try:
        with here.client(timeout=10) as client:
            own_key = zmq.auth.load_certificate(keys_dir(here_dir) / "server.key")[0].decode()
            with pytest.raises(BadRequest, match="this box's own bus"):  # its own key pasted
                link(client, peer.tcp_endpoint, "lab", server_key=own_key)
            linked = link(client, peer.tcp_endpoint, "lab", server_key=peer_key)
            assert linked["state"] == "down" and "--server-key" in linked["error"]
            # `aether-box keys authorize` on the peer: admitted there at once.
            authorize_key(peer_dir, keys_dir(here_dir) / "server.key", USE, "here")
            wait_for(lambda: peers(client)["lab"]["state"] == "up", 10, "the link up")
            assert client.request("lab/echo", {"ok": 1}) == {"ok": 1}
    finally:
        here.stop()
        peer.stop()


def test_a_box_is_not_linked_to_itself_nor_to_one_peer_twice(data_dir, tmp_path_factory):
    peer = BoxInThread(tmp_path_factory.mktemp("peer"))
    here = BoxInThread(data_dir, FAST)
    try:
        with here.client(timeout=10) as client:
            for own in (here.tcp_endpoint, here.endpoint):
                with pytest.raises(BadRequest, match="this box's own bus"):
                    link(client, own, "me")
            assert "me" not in peers(client)
            assert "me/echo" not in client.status()["services"]
            assert "me" not in (data_dir / "peers.toml").read_text()
            link(client, peer.tcp_endpoint, "lab")
            with pytest.raises(BadRequest, match="already linked as 'lab'"):
                link(client, peer.tcp_endpoint, "lab2")
            assert sorted(peers(client)) == ["lab"]
    finally:
        here.stop()
        peer.stop()


def test_link_remove_with_an_empty_name_is_refused_not_a_listing(data_dir):
    here = BoxInThread(data_dir, FAST)
    try:
        result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "link", "--remove", ""])
        assert result.exit_code == 2 and "--remove" in result.output, result.output
    finally:
        here.stop()

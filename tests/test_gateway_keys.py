"""API keys of the HTTP gateway: made and revoked with `aether-box keys api`, checked on every
request by a real box, counted per key name, never shown or logged."""

from __future__ import annotations

import json
import socket
import stat

import openai
import pytest
from click.testing import CliRunner
from fixtures_box import BoxInThread
from fixtures_gateway import gateway_box
from test_monitor_metrics import scrape

from aether_box.cli import cli
from aether_box.errors import BadRequest, ConfigError, NotFound
from aether_box.gateway.keys import KeyRing, create_key, load_keys, revoke_key


def keys_cli(data_dir, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "keys", "api", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_gateway_off_loopback_or_requiring_keys_will_not_start_without_one(data_dir):
    for http in ({"address": "0.0.0.0:0"}, {"address": "127.0.0.1:0", "require_key": True}):
        with pytest.raises(ConfigError, match="keys api create"):
            BoxInThread(data_dir, {"http": http})


def test_keys_are_required_limited_counted_and_revoked_at_once(models_dir, data_dir):
    full = keys_cli(data_dir, "create", "alice").strip()
    embed_only = keys_cli(
        data_dir, "create", "bob", "--models", "minilm", "--services", "embed"
    ).strip()
    keys_file = data_dir / "api_keys.json"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert full not in keys_file.read_text() and embed_only not in keys_file.read_text()
    assert "bob" in keys_cli(data_dir, "list")

    with gateway_box(models_dir, data_dir, require_key=True) as gateway:
        with pytest.raises(openai.AuthenticationError):
            gateway.openai().models.list()  # no valid key
        assert {m.id for m in gateway.openai(full).models.list()} >= {"smollm2", "minilm"}

        bob = gateway.openai(embed_only)
        assert [m.id for m in bob.models.list()] == ["minilm"]
        assert len(bob.embeddings.create(model="minilm", input="hi").data) == 1
        with pytest.raises(openai.PermissionDeniedError) as denied:
            bob.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "hi"}]
            )
        assert "bob" in denied.value.body["message"]

        keys_cli(data_dir, "revoke", "bob")
        with pytest.raises(openai.AuthenticationError):  # at once: the CLI told the box
            bob.embeddings.create(model="minilm", input="hi")

        report = gateway.status()
        keys = report["http"]["keys"]
        assert keys["alice"]["requests"] == 1
        assert keys["bob"]["requests"] == 3 and keys["bob"]["client_errors"] == 1
        assert keys["-"]["requests"] == 2  # refused: no key, then bob's revoked one
        text = json.dumps(report)
        assert full not in text and embed_only not in text
        samples = scrape(report["metrics"]["url"])
        assert samples[("aether_box_http_key_requests_total", (("key", "bob"),))] == 3
        route = (("route", "/v1/embeddings"),)
        assert samples[("aether_box_http_route_requests_total", route)] == 2
        assert samples[("aether_box_http_route_client_errors_total", route)] == 1


def test_a_taken_default_port_moves_to_a_free_one(data_dir):
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 7748))
        taken.listen()
    except OSError:
        pass  # already taken by someone else: as good
    try:
        with gateway_box(None, data_dir, address="127.0.0.1:7748") as gateway:
            assert gateway.url.startswith("http://127.0.0.1:")
            assert not gateway.url.endswith(":7748")
    finally:
        taken.close()


def test_the_keys_file_keeps_hashes_and_its_errors_say_what_to_do(tmp_path):
    path = tmp_path / "api_keys.json"
    record, secret = create_key(path, "ci", models=["minilm"])
    assert KeyRing(load_keys(path)).check(secret) == record
    assert KeyRing(load_keys(path)).check(secret + "x") is None
    with pytest.raises(BadRequest, match="exists"):
        create_key(path, "ci")
    with pytest.raises(BadRequest, match="letters"):
        create_key(path, "no spaces")
    revoke_key(path, "ci")
    assert KeyRing(load_keys(path)).check(secret) is None
    create_key(path, "ci")  # the name is free again once revoked
    with pytest.raises(NotFound, match=r"live keys: \['ci'\]"):
        revoke_key(path, "other")
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="keys api create"):
        load_keys(path)

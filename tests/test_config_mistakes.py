"""A user's mistakes in config.toml, environment variables and --set: each is one line that
names the key, what it must be and where the value was set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aether_box.config import Config
from aether_box.errors import ConfigError


def config_show(data_dir, toml: str, env: dict[str, str] | None = None, *args: str):
    (data_dir / "config.toml").write_text(toml)
    return subprocess.run(
        [sys.executable, "-m", "aether_box", "--data-dir", str(data_dir), *args, "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("bus = 3\n", "bus = 3 in {path}: [bus] is a section, not a value; put its keys under"),
        ("bus = [1, 2]\n", "bus = [1, 2] in {path}: [bus] is a section, not a value"),
        ("max_message_mb = 8\n", "max_message_mb = 8 in {path} is outside any section; it "),
        ("[engine]\nparallel = 2\n", "unknown config section [engine] in {path} (did you mean"),
        ("[bus]\nmax_mesage_mb = 8\n", "(did you mean 'max_message_mb'?)"),
        (
            "[hello]\ngreeting = 'hi'\n",
            "unknown config section [hello] in {path} (if a plugin adds [hello], it is not "
            "installed, or AETHER_BOX_LOAD_PLUGINS leaves it out)",
        ),
    ],
    ids=[
        "number-for-a-section",
        "list-for-a-section",
        "key-outside",
        "section-typo",
        "key-typo",
        "plugin-section-without-its-plugin",
    ],
)
def test_a_misplaced_value_says_where_it_belongs(data_dir, toml, says):
    result = config_show(data_dir, toml)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert says.format(path=data_dir / "config.toml") in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("[engines]\nparallel = true\n", "engines.parallel must be an integer, got True"),
        ("[bus]\nheartbeat_s = nan\n", "bus.heartbeat_s must be a number, got nan"),
        (
            "[bus]\nendpoints = [1, 2]\n",
            "bus.endpoints must be a list, each item a text, got [1, 2]",
        ),
    ],
    ids=["true-for-a-number", "nan", "numbers-for-endpoints"],
)
def test_a_wrong_type_is_refused_with_the_file_named(data_dir, toml, says):
    (data_dir / "config.toml").write_text(toml)
    with pytest.raises(ConfigError) as raised:
        Config(data_dir, environ={}).as_dict()
    assert str(raised.value) == f"{says} (in {data_dir / 'config.toml'}) [config]"


def test_an_environment_value_names_its_variable(data_dir):
    result = config_show(data_dir, "", {"AETHER_BOX_BUS_MAX_MESSAGE_MB": "lots"})
    assert result.returncode == 1, result.stdout
    assert (
        "bus.max_message_mb must be a number, got 'lots' (from $AETHER_BOX_BUS_MAX_MESSAGE_MB)"
        in result.stderr
    )
    flag = config_show(data_dir, "", None, "--set", "bus.queue_limit=0")
    assert "bus.queue_limit must be at least 1, got 0 (from --set)" in flag.stderr


def test_a_file_saved_with_a_byte_order_mark_is_read(data_dir):
    (data_dir / "config.toml").write_bytes(b"\xef\xbb\xbf[bus]\r\nmax_message_mb = 8\r\n")
    assert Config(data_dir, environ={}).as_dict()["bus"]["max_message_mb"] == 8.0

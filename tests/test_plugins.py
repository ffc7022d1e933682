"""A pip-installed package with an `aether_box` entry point adds a component, its config
section and a CLI command, with no edit to this repository (tests/data/hello_plugin)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_box import BoxProcess

from aether_box.plugins import LOAD_ENV

PLUGIN_SOURCE = Path(__file__).parent / "data" / "hello_plugin"


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment that sees this one's packages and has the plugin installed.

    Installed with pip, as a user would, into its own environment: this test process (and
    every other test) never sees the plugin.
    """
    root = tmp_path_factory.mktemp("plugin")
    env = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env)],
        check=True,
    )
    python = env / "bin" / "python"
    env_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # This environment's packages (aether-box, in editable mode, included): addsitedir also
    # reads their .pth files, which a plain path line would not.
    lines = [f"import site; site.addsitedir({p!r})" for p in site.getsitepackages()]
    Path(env_site, "_parent_env.pth").write_text("\n".join(lines) + "\n")
    source = shutil.copytree(PLUGIN_SOURCE, root / "hello_plugin")  # the build writes there
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", source],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return python


def aether_box(
    python: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != LOAD_ENV}
    return subprocess.run(
        [python, "-m", "aether_box", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **(env or {})},
    )


def test_a_plugin_adds_its_command_and_config_section(plugin_python, data_dir):
    listed = aether_box(plugin_python, "--help")
    assert "hello" in listed.stdout, listed.stderr
    said = aether_box(plugin_python, "hello", "Ada")
    assert said.stdout.strip() == "hello from a plugin, Ada", said.stderr
    shown = aether_box(
        plugin_python, "--data-dir", str(data_dir), "--set", "hello.greeting=hi", "config", "show"
    )
    assert '[hello]\ngreeting = "hi"' in shown.stdout, shown.stderr


def test_load_plugins_limits_which_plugins_load(plugin_python, data_dir):
    none = {LOAD_ENV: ""}
    assert aether_box(plugin_python, "hello", env=none).returncode == 2  # no such command
    shown = aether_box(plugin_python, "--data-dir", str(data_dir), "config", "show", env=none)
    assert "[hello]" not in shown.stdout and "[memory]" in shown.stdout  # built-ins stay
    named = aether_box(plugin_python, "hello", env={LOAD_ENV: "aether-box-hello"})
    assert named.returncode == 0, named.stderr


def test_a_plugin_component_serves_in_the_box(plugin_python, data_dir):
    box = BoxProcess(data_dir, "--set", "hello.greeting=hi", python=plugin_python)
    try:
        with box.client(timeout=10) as client:
            reply = client.request("hello", {"who": "Ada"})
            report = client.status()
        assert reply["text"] == "hi, Ada"
        assert reply["services"] == len(report["services"])  # it found status by interface
        assert report["hello"] == {"greeted": 1}  # its status section
        assert report["components"]["hello"] == {"restarts": 0, "services": ["hello"]}
        assert report["services"]["echo"]["requests"] == 1  # its in-process call counted
    finally:
        assert box.stop() == 0, box.output()

"""What a plugin author's mistakes look like: one line that names the plugin's class and what
to do, never a traceback alone, a silent no-op or a box that cannot be stopped.

Each plugin is a real distribution (a .dist-info with an `aether_box` entry point) on the
PYTHONPATH of a real `python -m aether_box` process, which is how importlib finds one pip put
in site-packages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fixtures_box import TEST_ENDPOINTS, TEST_HTTP, TEST_METRICS, wait_for

from aether_box.client import Client
from aether_box.plugins import LOAD_ENV

COMPONENT = """
from typing import Any, ClassVar
import anyio
from aether_box.plugins import hookimpl

class Plugged:
    name: ClassVar[str] = "plugged"
    settings_class: ClassVar[type | None] = None

    def __init__(self, ctx):
        pass

    async def serve(self, ctx, *, task_status: Any) -> None:
        {serve}

@hookimpl
def register_components(register):
    register(Plugged)
"""


def make_plugin(root: Path, source: str, name: str = "plugged") -> dict[str, str]:
    """A distribution `name` whose entry point is a module with `source`; -> its env."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[aether_box]\n{name} = {name}_plugin\n")
    (root / f"{name}_plugin.py").write_text(textwrap.dedent(source))
    environ = {k: v for k, v in os.environ.items() if k != LOAD_ENV}
    return {**environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def box_args(data_dir: Path) -> list[str]:
    """`aether-box` with the test endpoints (ephemeral ports), for `data_dir`."""
    bus = TEST_ENDPOINTS
    return [
        sys.executable,
        "-m",
        "aether_box",
        "--data-dir",
        str(data_dir),
        "--set",
        f"bus.endpoints={bus['endpoints']!r}".replace("'", '"'),
        "--set",
        f"bus.event_endpoints={bus['event_endpoints']!r}".replace("'", '"'),
        "--set",
        f"monitor.metrics_address={TEST_METRICS}",
        "--set",
        f"http.address={TEST_HTTP}",
    ]


def run(env: dict[str, str], data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*box_args(data_dir), *args], capture_output=True, text=True, timeout=120, env=env
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's closing `Error: ...` line (a box logs a traceback above it, on purpose)."""
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("serve", "says"),
    [
        ('raise RuntimeError("no licence file")', "RuntimeError('no licence file')"),
        (
            'ctx.add_service("echo", lambda request: {})',
            "cannot serve 'echo': component 'echo' already serves it; choose another",
        ),
    ],
    ids=["raises-in-start", "takes-a-built-in-service-name"],
)
def test_a_plugin_component_that_cannot_start_is_one_line(tmp_path, data_dir, serve, says):
    env = make_plugin(tmp_path, COMPONENT.format(serve=serve))
    last = one_line_error(run(env, data_dir, "run"))
    assert last.startswith("Error: component 'plugged' (plugged_plugin.Plugged) failed to start"), (
        last
    )
    assert says in last and LOAD_ENV in last
    assert not (data_dir / "bus.sock").exists()  # the failed start left no socket behind


def test_a_plugin_component_that_never_starts_still_stops_on_sigterm(tmp_path, data_dir):
    env = make_plugin(tmp_path, COMPONENT.format(serve="await anyio.sleep_forever()"))
    log_path = data_dir / "box.log"
    with log_path.open("w") as log:
        box = subprocess.Popen(
            [*box_args(data_dir), "run"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:

        def waiting_for_plugged() -> bool:
            assert box.poll() is None, log_path.read_text()
            if not (data_dir / "bus.sock").exists():
                return False
            try:
                with Client(f"ipc://{data_dir}/bus.sock", timeout=2) as client:
                    report = client.status()
            except Exception:
                return False
            return "plugged" in report["components"] and not report["ready"]

        wait_for(waiting_for_plugged, 60, "the box waiting for the plugin's component")
        box.send_signal(signal.SIGTERM)
        assert box.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if box.poll() is None:
            box.kill()
            box.wait()
    assert "stopped while starting" in log_path.read_text()


@pytest.mark.parametrize(
    ("source", "says"),
    [
        (
            """
            from aether_box.plugins import hookimpl

            @hookimpl
            def register_components(register):
                register("plugged_missing:Thing")
            """,
            "a plugin registered 'plugged_missing:Thing', which cannot be imported",
        ),
        (
            """
            from aether_box.plugins import hookimpl

            @hookimpl
            def register_component(register):
                pass
            """,
            "unknown hook 'register_component' in plugin",
        ),
        (
            """
            from dataclasses import dataclass
            from aether_box.config import section
            from aether_box.plugins import hookimpl

            @section("bus")
            @dataclass
            class MyBus:
                fast: bool = True

            @hookimpl
            def register_settings(register):
                register(MyBus)
            """,
            "config section [bus] is claimed by aether_box.bus.settings.BusSettings and by "
            "plugged_plugin.MyBus; a plugin must choose another section name",
        ),
        (
            """
            import click
            from aether_box.plugins import hookimpl

            @hookimpl
            def register_commands(register):
                register("memory", click.Command("memory"))
            """,
            "two plugins register the command 'memory'; a plugin must choose another name",
        ),
        (
            """
            from aether_box.plugins import hookimpl

            @hookimpl
            def register_components(register):
                raise RuntimeError("no GPU here")
            """,
            "plugin 'plugged' failed in register_components: RuntimeError('no GPU here')",
        ),
    ],
    ids=[
        "bad-reference",
        "misspelt-hook",
        "section-of-a-built-in",
        "command-of-a-built-in",
        "hook-raises",
    ],
)
def test_plugin_registration_mistakes_are_named(tmp_path, data_dir, source, says):
    last = one_line_error(run(make_plugin(tmp_path, source), data_dir, "config", "show"))
    assert says in last, last


def test_load_plugins_naming_a_plugin_that_is_not_installed_says_so(tmp_path, data_dir):
    env = make_plugin(tmp_path, COMPONENT.format(serve="task_status.started()"))
    result = run({**env, LOAD_ENV: "plugged,pluged"}, data_dir, "config", "show")
    last = one_line_error(result)
    assert last.startswith(
        f"Error: {LOAD_ENV} names pluged, which no installed plugin is called; installed plugins: "
    ), last
    assert "plugged" in last.rsplit(":", 1)[1]
    assert run({**env, LOAD_ENV: "plugged"}, data_dir, "config", "show").returncode == 0

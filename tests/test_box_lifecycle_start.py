"""Starting and stopping: a component that fails or hangs as the box starts, and the files a
stopped box leaves in its data dir."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, ClassVar

import anyio
import anyio.from_thread
import pytest
from fixtures_box import BoxInThread, wait_for

from aether_box import box as box_module
from aether_box.box import Box
from aether_box.config import Config
from aether_box.echo import EchoComponent
from aether_box.errors import ConfigError


class NeverStarts:
    """Forgets task_status.started(): the box waits for it."""

    name: ClassVar[str] = "never"
    settings_class: ClassVar[type | None] = None

    def __init__(self, ctx: Any) -> None:
        pass

    async def serve(self, ctx: Any, *, task_status: Any) -> None:
        await anyio.sleep_forever()


class BadInit(NeverStarts):
    name: ClassVar[str] = "bad_init"

    def __init__(self, ctx: Any) -> None:
        raise KeyError("model_path")


def test_a_stopped_box_leaves_no_socket_files(data_dir, caplog):
    BoxInThread(data_dir, components=[EchoComponent]).stop()
    assert not (data_dir / "bus.sock").exists() and not (data_dir / "events.sock").exists()
    with caplog.at_level(logging.INFO, logger="aether_box.box"):
        BoxInThread(data_dir, components=[EchoComponent]).stop()
    assert "did not stop cleanly" not in caplog.text  # it did


def test_a_component_that_fails_in_its_constructor_is_one_error(data_dir):
    with pytest.raises(ConfigError) as raised:
        BoxInThread(data_dir, components=[EchoComponent, BadInit])
    assert "component 'bad_init' (test_box_lifecycle_start.BadInit) failed to start: " in str(
        raised.value
    )
    assert "KeyError('model_path')" in str(raised.value)
    assert not (data_dir / "bus.sock").exists()


def test_a_component_that_never_starts_is_named_and_stop_still_ends_the_box(
    data_dir, caplog, monkeypatch
):
    monkeypatch.setattr(box_module, "SLOW_START_S", 0.2)
    box = Box(
        Config(data_dir, {"bus": {"endpoints": [f"ipc://{data_dir}/bus.sock"]}}),
        [EchoComponent, NeverStarts],
    )
    with (
        caplog.at_level(logging.INFO, logger="aether_box.box"),
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
    ):
        running = portal.start_task_soon(partial(box.run, handle_signals=False))
        wait_for(lambda: "has not started after" in caplog.text, 30, "the slow-start warning")
        assert "component 'never' has not started after 0.2 s" in caplog.text
        assert "task_status.started()" in caplog.text
        portal.call(box.stop)
        running.result(timeout=30)  # before the fix: never returned
    assert not box.ready and "stopped while starting" in caplog.text


def test_a_data_dir_that_is_a_file_is_one_error(data_dir):
    not_a_dir = data_dir / "box-home"
    not_a_dir.write_text("a file, not a directory")
    with pytest.raises(ConfigError) as raised:
        BoxInThread(not_a_dir, components=[EchoComponent])
    assert str(raised.value).startswith(f"cannot use {not_a_dir} as the data dir (")
    assert "pass another --data-dir" in str(raised.value)


def test_a_box_with_no_bus_endpoint_is_refused(data_dir):
    with pytest.raises(ConfigError, match="bus.endpoints is empty: the box would listen nowhere"):
        BoxInThread(data_dir, {"bus": {"endpoints": []}}, components=[EchoComponent])


class Nameless:
    """Has serve() but no name."""

    def __init__(self, ctx: Any) -> None:
        pass

    async def serve(self, ctx: Any, *, task_status: Any) -> None:
        task_status.started()


def test_a_class_that_is_not_a_component_is_named(data_dir):
    with pytest.raises(ConfigError) as raised:
        BoxInThread(data_dir, components=[EchoComponent, Nameless])
    assert str(raised.value).startswith(
        "test_box_lifecycle_start.Nameless is not a component: it needs a `name` (a text) and "
        "`async serve(ctx, *, task_status)`"
    )


def test_run_with_a_data_dir_that_is_a_file_is_one_line(data_dir):
    from click.testing import CliRunner

    from aether_box.cli import cli

    not_a_dir = data_dir / "box-home"
    not_a_dir.write_text("a file, not a directory")
    # `run` sets up its log file first: that is where the trouble showed (a traceback).
    # (--data-dir checks it is a directory as it is parsed; $AETHER_BOX_HOME cannot.)
    result = CliRunner().invoke(cli, ["run"], env={"AETHER_BOX_HOME": str(not_a_dir)})
    assert result.exit_code == 1
    assert f"cannot use {not_a_dir} as the data dir" in result.output, result.output


def test_stop_ends_the_box_of_a_data_dir_and_says_when_there_is_none(box_process):
    from click.testing import CliRunner

    from aether_box.cli import cli

    data_dir = box_process.data_dir
    stopped = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "stop"])
    assert stopped.exit_code == 0 and "stopped the box" in stopped.output, stopped.output
    assert box_process.process.wait(10) == 0  # a graceful stop, as Ctrl-C
    none = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "stop"])
    assert none.exit_code == 1 and f"no box is running with data dir {data_dir}" in none.output


def test_a_taken_event_port_names_the_events_option(data_dir):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        events = {"event_endpoints": [f"tcp://127.0.0.1:{port}"]}
        with pytest.raises(ConfigError) as raised:
            BoxInThread(data_dir, {"bus": events}, components=[EchoComponent])
    finally:
        taken.close()
    assert f"cannot listen on tcp://127.0.0.1:{port}" in str(raised.value)
    assert "choose other endpoints with bus.event_endpoints" in str(raised.value)

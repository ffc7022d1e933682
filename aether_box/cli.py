"""The `aether-box` command: run the box, inspect it, and drive its capabilities.

Subcommand groups live beside their capability (``aether_box/<name>/cli.py``), are
registered through the plugin registry (aether_box.plugins: built-ins and installed plugins
alike) and imported only when used, so `aether-box status` stays fast. Errors users can hit are
`BoxError`s, turned into one clear line (and exit code 1) only here, at the edge.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from aether_box import __version__
from aether_box.config import Config, data_dir_from, overrides_from
from aether_box.errors import BoxError
from aether_box.private import private_umask

__all__ = [
    "main",
    "CliState",
    "pass_state",
    "SECONDS",
    "Whole",
    "checked_endpoint",
    "timeout_option",
]

# The bus carries 64-bit integers: a bigger number is refused at the option, in one line,
# not by the message encoder with a traceback.
BUS_INT_MAX = 2**63 - 1
# zmq keeps a receive timeout in milliseconds in a C int (about 24 days); more overflows it.
MAX_WAIT_S = 2_000_000.0


@dataclass
class CliState:
    """What every subcommand needs: the data dir, config overrides and a way to reach the box."""

    data_dir: Path
    endpoint: str | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def config(self) -> Config:
        return Config(self.data_dir, self.overrides)  # sections: the plugin registry's

    def client(self, timeout: float = 30.0):
        from aether_box.client import Client

        return Client(self.endpoint, data_dir=self.data_dir, timeout=timeout)


pass_state = click.make_pass_decorator(CliState)


class Whole(click.ParamType):
    """A whole number from `low` to `high` (by default: what the bus can carry)."""

    name = "integer"

    def __init__(self, low: int = 1, high: int = BUS_INT_MAX) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number: int = click.INT.convert(value, param, ctx)
        if number < self.low:
            self.fail(f"{number} is less than {self.low}", param, ctx)
        if number > self.high:
            self.fail(f"{number} is more than the largest allowed, {self.high}", param, ctx)
        return number


class Seconds(click.ParamType):
    """A wait in seconds: above 0, finite (not inf or nan), and what a socket timeout holds."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        seconds: float = click.FLOAT.convert(value, param, ctx)
        if not 0 < seconds <= MAX_WAIT_S:  # also false for nan
            self.fail(
                f"{value!r} is not a wait: give seconds above 0 and at most {MAX_WAIT_S:,.0f}",
                param,
                ctx,
            )
        return seconds


SECONDS = Seconds()


def timeout_option(
    default: float | None = 30.0, help: str = "Seconds to wait for the box."
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The `--timeout` of a command that waits on the box: seconds, checked as it is parsed."""
    return click.option(
        "--timeout", type=SECONDS, default=default, show_default=default is not None, help=help
    )


def endpoint_problem(endpoint: str, *, bind: bool = False) -> str | None:
    """Why zmq could not use `endpoint` (None when it can): caught here, it is one line, not
    a ZMQError traceback. Binding also takes port `*` (any free one)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc") or not rest:
        return "not a bus endpoint"
    if scheme == "ipc":
        return None
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        return "a tcp endpoint needs a host and a port"
    if not (port.isdigit() and int(port) < 65536 or bind and port == "*"):
        return f"{port!r} is not a port"
    return None


def checked_endpoint(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Option callback: refuse endpoints zmq cannot use, saying what one looks like."""
    bind = param.name == "binds"
    for endpoint in value if isinstance(value, tuple) else [value]:
        if endpoint is None:
            continue
        problem = endpoint_problem(endpoint, bind=bind)
        if problem:
            example = "tcp://127.0.0.1:*" if bind else "tcp://127.0.0.1:7745"
            raise click.BadParameter(
                f"{endpoint!r}: {problem}; give tcp://HOST:PORT (e.g. {example}) or ipc://PATH",
                ctx,
                param,
            )
    return value


class BoxGroup(click.Group):
    """A click group that loads lazy subcommands and shows BoxErrors as one clear line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from aether_box.plugins import registry

        return sorted({*super().list_commands(ctx), *registry().command_refs})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            from aether_box.plugins import registry

            command = registry().command(name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BoxError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=BoxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aether-box")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where models, memory, keys and logs live (default: $AETHER_BOX_HOME, else the user "
    "data dir). A second box needs only its own: its clients find it there.",
)
@click.option(
    "--endpoint",
    callback=checked_endpoint,
    help="The bus endpoint to talk to (default: where the data dir's box listens; for the "
    "default data dir with no box socket, tcp://127.0.0.1:7745).",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one config value, e.g. --set bus.max_message_mb=8 (repeatable).",
)
@click.pass_context
def cli(
    ctx: click.Context, data_dir: Path | None, endpoint: str | None, settings: tuple[str, ...]
) -> None:
    """Aether Box: a local AI appliance on a ZeroMQ bus.

    Start it with `aether-box run`; check it with `aether-box status`.
    """
    try:
        overrides = overrides_from(settings)
    except BoxError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from exc
    private_umask()  # keys, exports and logs any command writes are the user's alone
    ctx.obj = CliState(data_dir_from(data_dir), endpoint, overrides)


@cli.command()
@click.option(
    "--bind",
    "binds",
    multiple=True,
    metavar="ENDPOINT",
    callback=checked_endpoint,
    help="Bus endpoint to listen on, replacing the defaults (repeatable). "
    "Non-loopback tcp needs CURVE keys: `aether-box keys init`.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@pass_state
def run(state: CliState, binds: tuple[str, ...], log_level: str) -> None:
    """Run the box until SIGINT/SIGTERM (Ctrl-C), then shut down gracefully."""
    import anyio

    from aether_box.box import Box
    from aether_box.logs import setup_logging

    if binds:
        state.overrides.setdefault("bus", {})["endpoints"] = list(binds)
    config = state.config()
    setup_logging(config.data_dir, log_level.upper())
    logging.getLogger(__name__).info("data dir %s", config.data_dir)
    anyio.run(Box(config).run, backend="asyncio")


cli.add_command(run, "serve")  # the name other servers use; the same command


@cli.command()
@timeout_option(60.0, "Seconds to wait for it to finish the requests in flight.")
@pass_state
def stop(state: CliState, timeout: float) -> None:
    """Stop the box of this data dir, as Ctrl-C does: it finishes what is in flight first."""
    from aether_box.box import running_pid

    data_dir = state.data_dir  # resolved already, as the group parsed --data-dir
    pid = running_pid(data_dir)
    if pid is None:
        raise click.ClickException(f"no box is running with data dir {data_dir}")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # it ended between the look and the signal
        pid = None
    except PermissionError as exc:
        raise click.ClickException(
            f"the box (pid {pid}) belongs to another user; stop it as that user"
        ) from exc
    deadline = time.monotonic() + timeout
    while pid is not None and running_pid(data_dir) == pid:
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"the box (pid {pid}) is still finishing its requests after {timeout:g} s; "
                "it stops once they are done (`aether-box status` shows them)"
            )
        time.sleep(0.1)  # its lock goes when it has stopped: nothing to wait on but that
    click.echo(f"stopped the box of {data_dir}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw report as JSON.")
@timeout_option(5.0)
@pass_state
def status(state: CliState, as_json: bool, timeout: float) -> None:
    """Show a running box's health, services and counters."""
    with state.client(timeout) as client:
        report = client.status()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    from aether_box.status_view import render_status

    render_status(report)


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@pass_state
def config_show(state: CliState) -> None:
    """Print the effective config (defaults < config.toml < env < --set) as TOML."""
    cfg = state.config()
    text = cfg.to_toml()  # checks every value first: an error prints nothing else
    click.echo(f"# effective config; file: {cfg.path}{'' if cfg.path.exists() else ' (absent)'}")
    click.echo(text)


@cli.group()
def keys() -> None:
    """Manage CURVE keys (encrypted tcp access) and API keys (`keys api`, the HTTP gateway)."""


@keys.command("init")
@click.option(
    "--force", is_flag=True, help="Replace existing keys (clients must get the new server key)."
)
@pass_state
def keys_init(state: CliState, force: bool) -> None:
    """Make the box keypair and a local client keypair, and authorise that client."""
    from aether_box.bus.security import AUTHORIZED_DIR, init_keys

    root = init_keys(state.data_dir, force=force)
    click.echo(f"keys written to {root}")
    click.echo(f"box public key: {root / 'server.key'} (give it to remote clients)")
    click.echo(f"allowed clients: put their public .key files in {root / AUTHORIZED_DIR}")
    click.echo(
        "What changes at the next start: tcp endpoints on non-loopback addresses use CURVE and "
        "admit only the allowed clients (binding them is allowed now). Loopback tcp and the ipc "
        "socket stay plain, so local apps keep working; `--set bus.curve=on` puts loopback tcp "
        "under CURVE too (local tools of this data dir use its client keys by themselves)."
    )


@keys.command("authorize")
@click.argument("key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--scope",
    type=click.Choice(["read", "use", "admin"]),
    default="use",
    show_default=True,
    help="read: status, lists, search. use: also chat, embed, memory add, sessions. "
    "admin: also memory drop/delete, federation links, models, projectors, adapters, tuner.",
)
@click.option("--name", help="The name it is kept under (default: the file's name).")
@pass_state
def keys_authorize(state: CliState, key_file: Path, scope: str, name: str | None) -> None:
    """Allow a CURVE client (its public .key file) to use the box, with an access scope."""
    from aether_box.bus.security import authorize_key

    if name is not None and not name.strip():  # else the file's name is taken, unasked
        raise click.BadParameter("give a name, or leave --name out", param_hint="--name")
    target = authorize_key(state.data_dir, key_file, scope, name)
    click.echo(
        f"authorized {target.stem} with scope {scope} ({target}); a new key is admitted at "
        "once, a changed scope at the box's next start"
    )


def _add_api_keys() -> None:
    # `keys api ...` (the HTTP gateway's keys) beside the CURVE keys; the module is small and
    # imports neither Starlette nor Hypercorn.
    from aether_box.gateway.cli import api

    keys.add_command(api)


_add_api_keys()


# Options of the top-level group that may also be written after the subcommand.
GLOBAL_OPTIONS = ("--set", "--data-dir", "--endpoint")


def hoist_global_options(args: list[str]) -> list[str]:
    """Move global options written after the subcommand to the front, where click reads them.

    `aether-box config show --set bus.max_message_mb=8` then means what it says. Arguments
    after `--` are left alone.
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            if "=" in arg:
                front.append(arg)
            else:
                front.extend(args[i : i + 2])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main() -> None:
    """Entry point of the `aether-box` script."""
    cli(args=hoist_global_options(sys.argv[1:]), prog_name="aether-box")


if __name__ == "__main__":
    sys.exit(main())

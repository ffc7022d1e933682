"""`aether-box tui`: open the dashboard on a running box."""

from __future__ import annotations

import click

from aether_box.cli import CliState, checked_endpoint, pass_state

__all__ = ["tui"]


@click.command()
@click.option(
    "--endpoint",
    callback=checked_endpoint,
    help="The box's bus endpoint (default: the global --endpoint, else "
    "the data dir's ipc socket, else tcp://127.0.0.1:7745).",
)
@click.option(
    "--poll",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.2, 10.0),
    help="Seconds between status polls.",
)
@pass_state
def tui(state: CliState, endpoint: str | None, poll: float) -> None:
    """Watch and drive a running box: health, services, models, memory, log; chat and search.

    Works over ssh. Starts even when no box is running, and connects once one is.
    """
    from aether_box.tui.app import BoxApp
    from aether_box.tui.link import BoxLink

    link = BoxLink(endpoint or state.endpoint, state.data_dir, poll_s=poll)
    BoxApp(link).run()

"""`aether-box tuner`: what the tuner decided, and applying, undoing or dropping a decision."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from aether_box.cli import CliState, Whole, pass_state, timeout_option

__all__ = ["tuner"]

SERVICE = "tuner"


@click.group()
def tuner() -> None:
    """The tuner: the box acting on what it observes, every decision logged.

    \b
    aether-box tuner status          # modes, counts, work in progress, open proposals
    aether-box tuner log             # the latest decisions: signal, figures, outcome
    aether-box tuner apply ID        # carry out a proposed decision
    aether-box tuner rollback ID     # undo an applied one (e.g. restore the old projector)
    aether-box tuner dismiss ID      # drop a proposal

    Each action's mode (auto, propose or off) is set in the [tuner] config section.
    """


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _line(d: dict[str, Any]) -> str:
    outcome = f" -- {d['outcome']}" if d.get("outcome") else ""
    message = (d.get("signal") or {}).get("message") or ""
    why = f"\n      signal: {message}" if message else ""
    return (
        f"#{d['id']:<4} {_when(d['created'])}  {d['action']:<16} {d['subject']:<28} "
        f"{d['state']}{outcome}{why}"
    )


def _show(d: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(d, indent=2, default=float))
        return
    click.echo(_line(d))
    for key in ("params", "before", "after"):
        if d.get(key):
            click.echo(f"      {key}: {json.dumps(d[key], default=float)}")


@tuner.command("log")
@click.option(
    "--limit", type=Whole(), default=20, show_default=True, help="How many decisions, newest first."
)
@click.option("--action", help="Only this action (unload, refit_projector, refit_router, ...).")
@click.option("--state", "wanted", help="Only this state (proposed, applied, rejected, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
@pass_state
def log_cmd(
    state: CliState, limit: int, action: str | None, wanted: str | None, as_json: bool
) -> None:
    """The tuner's decisions, newest first, with the signal, figures and outcome of each."""
    body: dict[str, Any] = {"op": "log", "limit": limit}
    if action:
        body["action"] = action
    if wanted:
        body["state"] = wanted
    with state.client() as client:
        decisions = client.request(SERVICE, body)["decisions"]
    if as_json:
        click.echo(json.dumps(decisions, indent=2, default=float))
        return
    if not decisions and (action or wanted):
        click.echo(
            "no decisions match; `aether-box tuner log` without --action or --state lists all"
        )
    elif not decisions:
        click.echo("no decisions yet: the tuner acts when a signal triggers (tuner status)")
    for d in decisions:
        _show(d, False)


@tuner.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the section as JSON.")
@pass_state
def status_cmd(state: CliState, as_json: bool) -> None:
    """Each action's mode, its decisions by the state each is in, work in progress."""
    with state.client() as client:
        section = client.request(SERVICE, {"op": "status"})
    if as_json:
        click.echo(json.dumps(section, indent=2, default=float))
        return
    modes = ", ".join(f"{a} {m}" for a, m in section["modes"].items())
    click.echo(f"modes: {modes}")
    if not section["states"]:
        click.echo("no decisions yet: the tuner acts when a signal triggers")
    for action, states in sorted(section["states"].items()):  # the state each is in now
        counts = ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
        click.echo(f"  {action}: {counts}")
    for signal in section.get("signals", []):
        if signal["kind"] == "nll":  # one per model and adapter set
            f = signal["figures"]
            spread = (  # the median and limit exist once enough answers were scored
                "no limit until more answers are scored"
                if f["limit"] is None or f["median"] is None
                else f"median {f['median']}, limit {f['limit']}"
            )
            answers = f"{f['answers']} answer" + ("" if f["answers"] == 1 else "s")
            click.echo(
                f"nll {signal['subject']}: {f['nll']} nats/token, {spread} ({answers})"
                + (" SPIKE" if signal["triggered"] else "")
            )
        elif signal["triggered"] and signal.get("message"):
            click.echo(f"signal {signal['kind']} {signal['subject']}: {signal['message']}")
    for key, model in section.get("held_by_pins", {}).items():
        click.echo(f"held: {key} (a session pins {model}; acted on once unpinned)")
    for ident, progress in section["running"].items():
        click.echo(f"running #{ident}: {json.dumps(progress, default=float)}")
    if section["proposed"]:
        click.echo("proposed (aether-box tuner apply ID | dismiss ID):")
        for d in section["proposed"]:
            click.echo("  " + _line(d))


def _act(op: str, doc: str) -> click.Command:
    @click.argument("decision_id", metavar="ID", type=Whole())
    @click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
    @timeout_option(60.0, help="Seconds to wait.")
    @pass_state
    def command(state: CliState, decision_id: int, as_json: bool, timeout: float) -> None:
        with state.client(timeout) as client:
            decision = client.request(SERVICE, {"op": op, "id": decision_id})
        _show(decision, as_json)

    command.__doc__ = doc
    return tuner.command(op)(command)


_act("apply", "Carry out proposal ID (it runs in the box; `tuner status` shows progress).")
_act("rollback", "Undo applied decision ID: restore the previous projector or threshold, "
     "or load the unloaded model again.")  # fmt: skip
_act("dismiss", "Drop proposal ID without carrying it out.")

"""A plugin that adds the `hello` component, its [hello] config section and `aether-box hello`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
import click

from aether_box.config import section
from aether_box.context import BoxContext
from aether_box.contract import StatusReporter
from aether_box.plugins import hookimpl


@section("hello")
@dataclass
class HelloSettings:
    greeting: str = "hello"


class HelloComponent:
    """Serves `hello`: the greeting, and how many services the box runs (an interface call)."""

    name: ClassVar[str] = "hello"
    settings_class: ClassVar[type | None] = HelloSettings

    def __init__(self, ctx: BoxContext) -> None:
        self.settings = ctx.config.get(HelloSettings)
        self.greeted = 0

    async def serve(self, ctx: BoxContext, *, task_status: Any) -> None:
        async def hello(request: Any) -> dict[str, Any]:
            self.greeted += 1
            echoed = await ctx.call("echo", {"who": request.body.get("who", "world")})
            status = ctx.get(StatusReporter)
            services = len(status.report()["services"]) if status else 0
            return {"text": f"{self.settings.greeting}, {echoed['who']}", "services": services}

        ctx.add_service("hello", hello)
        task_status.started()
        await anyio.sleep_forever()

    def status_section(self) -> dict[str, Any]:
        return {"greeted": self.greeted}


@click.command()
@click.argument("who", default="world")
def hello(who: str) -> None:
    """Say hello (a plugin's command)."""
    click.echo(f"hello from a plugin, {who}")


@hookimpl
def register_components(register: Any) -> None:
    register(HelloComponent)


@hookimpl
def register_commands(register: Any) -> None:
    register("hello", hello)

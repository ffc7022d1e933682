"""The `echo` service: replies with the request body, arrays included (for health checks)."""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import anyio.abc

from aether_box.bus.service import Request
from aether_box.context import BoxContext

__all__ = ["EchoComponent"]


class EchoComponent:
    """Serves `echo`."""

    name: ClassVar[str] = "echo"
    settings_class: ClassVar[type | None] = None

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        ctx.add_service("echo", self.echo, inline=True)
        task_status.started()

    @staticmethod
    def echo(request: Request) -> dict[str, Any]:
        return request.body

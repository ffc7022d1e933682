"""The `echo` service: replies with the request body, arrays included (for health checks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from aether_box.bus.service import Request

if TYPE_CHECKING:
    from aether_box.box import Box

__all__ = ["EchoComponent"]


class EchoComponent:
    """Serves `echo`."""

    name = "echo"

    def __init__(self, box: Box) -> None:
        self.box = box

    async def serve(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        self.box.broker.add_service("echo", self.echo, inline=True)
        task_status.started()

    @staticmethod
    def echo(request: Request) -> dict[str, Any]:
        return request.body

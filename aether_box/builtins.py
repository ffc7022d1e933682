"""The built-in plugin: the box's own components, CLI commands and config sections.

It is registered through the same plugin manager, with the same hooks, as a third-party
package (see aether_box.plugins); its hooks run first, so built-ins start first. Classes and
commands are named as "module:attribute" and imported only when needed, so that
`aether-box status` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aether_box.plugins import hookimpl

__all__ = ["COMPONENTS", "COMMANDS", "SETTINGS"]

# Start order: a component may use the ones before it while it starts.
COMPONENTS = [
    "aether_box.status:StatusComponent",
    "aether_box.echo:EchoComponent",
    "aether_box.memory.service:MemoryComponent",
    "aether_box.engines.services:EnginesComponent",
    "aether_box.adapters.service:AdaptersComponent",
    "aether_box.align.service:AlignComponent",
    "aether_box.sessions.service:SessionsComponent",
    "aether_box.router.service:RouterComponent",
    "aether_box.tools.service:ToolsComponent",
    "aether_box.tools.orchestrator:OrchestratorComponent",
    "aether_box.federation.service:FederationComponent",
    "aether_box.grid.service:GridComponent",
    "aether_box.gateway.component:HttpComponent",
    "aether_box.monitor.metrics:MetricsComponent",
    "aether_box.monitor.observer:ObserverComponent",
    "aether_box.tuner.component:TunerComponent",
]

# Subcommand groups live beside their capability (aether_box/<name>/cli.py).
COMMANDS = {
    "models": "aether_box.models.cli:models",
    "memory": "aether_box.memory.cli:memory",
    "align": "aether_box.align.cli:align",
    "tui": "aether_box.tui.cli:tui",
    "link": "aether_box.federation.cli:link",
    "grid": "aether_box.grid.cli:grid",
    "chat": "aether_box.sessions.cli:chat",
    "sessions": "aether_box.sessions.cli:sessions",
    "adapters": "aether_box.adapters.cli:adapters",
    "tools": "aether_box.tools.cli:tools",
    "mcp": "aether_box.tools.mcp_server:mcp",
    "tuner": "aether_box.tuner.cli:tuner",
}

# Config sections that no component declares as its settings_class.
SETTINGS = [
    "aether_box.bus.settings:BusSettings",
    "aether_box.models.settings:ModelsSettings",
    "aether_box.engines.settings:EngineSettings",
    "aether_box.monitor.settings:MonitorSettings",
    "aether_box.memory.settings:MemorySettings",
    "aether_box.align.settings:AlignSettings",
    "aether_box.sessions.settings:SessionSettings",
    "aether_box.router.settings:RouterSettings",
    "aether_box.federation.settings:FederationSettings",
]


@hookimpl(tryfirst=True)
def register_components(register: Callable[[Any], None]) -> None:
    for ref in COMPONENTS:
        register(ref)


@hookimpl(tryfirst=True)
def register_commands(register: Callable[[str, Any], None]) -> None:
    for name, ref in COMMANDS.items():
        register(name, ref)


@hookimpl(tryfirst=True)
def register_settings(register: Callable[[type], None]) -> None:
    from aether_box.plugins import resolve

    for ref in SETTINGS:
        register(resolve(ref))

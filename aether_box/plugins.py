"""The one registry of components, CLI commands and config sections, fed by pluggy hooks.

The built-ins (aether_box.builtins) are a default plugin, registered through the same plugin
manager as a third-party package, which joins with an entry point in the ``aether_box``
group::

    [project.entry-points.aether_box]
    my_plugin = "my_package.plugin"

The module implements any of the hooks in `Spec` with `@hookimpl`. When
``AETHER_BOX_LOAD_PLUGINS`` is set, only the entry points it names (comma-separated entry
point or distribution names) load; set to the empty string, none do. Built-ins always load.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from aether_box.errors import ConfigError

if TYPE_CHECKING:
    import click

    from aether_box.contract import ComponentFactory

__all__ = [
    "ENTRY_POINT_GROUP",
    "LOAD_ENV",
    "Registry",
    "Spec",
    "hookimpl",
    "registry",
    "resolve",
    "where_defined",
]

ENTRY_POINT_GROUP = "aether_box"
LOAD_ENV = "AETHER_BOX_LOAD_PLUGINS"

hookspec = pluggy.HookspecMarker(ENTRY_POINT_GROUP)
hookimpl = pluggy.HookimplMarker(ENTRY_POINT_GROUP)


class Spec:
    """The hooks a plugin may implement; each gets a `register` callable."""

    @hookspec
    def register_components(self, register: Callable[[Any], None]) -> None:
        """Register component classes (or "module:Class" strings), in start order."""

    @hookspec
    def register_commands(self, register: Callable[[str, Any], None]) -> None:
        """Register CLI commands: ``register(name, command or "module:attribute")``."""

    @hookspec
    def register_settings(self, register: Callable[[type], None]) -> None:
        """Register config section dataclasses (marked with aether_box.config.section)."""


@dataclass
class Registry:
    """What every loaded plugin registered."""

    plugins: list[str] = field(default_factory=list)
    component_refs: list[Any] = field(default_factory=list)
    command_refs: dict[str, Any] = field(default_factory=dict)
    settings: list[type] = field(default_factory=list)

    def components(self) -> list[ComponentFactory]:
        """The component classes, imported on first use, in start order."""
        return [resolve(ref) for ref in self.component_refs]

    def command(self, name: str) -> click.Command | None:
        """A CLI command by name, imported on first use."""
        ref = self.command_refs.get(name)
        return None if ref is None else resolve(ref)

    def sections(self) -> dict[str, type]:
        """Config section name -> settings dataclass: those registered with
        `register_settings`, and each component's `settings_class`."""
        from aether_box.config import SECTION_ATTR

        classes = [*self.settings]
        for component in self.components():
            settings = getattr(component, "settings_class", None)
            if settings is not None and settings not in classes:
                classes.append(settings)
        sections: dict[str, type] = {}
        for cls in classes:
            name = getattr(cls, SECTION_ATTR, None)
            if not isinstance(name, str):
                raise ConfigError(f'{where_defined(cls)} is not marked with @section("name")')
            if name in sections:  # one would silently replace the other's settings
                raise ConfigError(
                    f"config section [{name}] is claimed by {where_defined(sections[name])} and by "
                    f"{where_defined(cls)}; a plugin must choose another section name (or leave it "
                    f"out with {LOAD_ENV})"
                )
            sections[name] = cls
        return sections


def where_defined(obj: Any) -> str:
    """A class as a plugin author finds it: module.Class."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"


def resolve(ref: Any) -> Any:
    """A registered object, importing a "module:attribute" reference."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"a plugin registered {ref!r}, which cannot be imported ({exc}); fix or uninstall "
            f"that plugin, or list only the plugins to load in {LOAD_ENV}"
        ) from exc


def plugin_manager() -> pluggy.PluginManager:
    """A manager with the built-ins and the allowed entry-point plugins registered."""
    from aether_box import builtins

    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(Spec)
    manager.register(builtins, name="aether_box.builtins")
    allowed = os.environ.get(LOAD_ENV)
    wanted = None if allowed is None else {p.strip() for p in allowed.split(",") if p.strip()}
    installed: set[str] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        installed |= {ep.name} | ({dist} if dist else set())
        if wanted is not None and ep.name not in wanted and dist not in wanted:
            continue
        if manager.get_plugin(ep.name) is None:
            try:
                plugin = ep.load()
            except Exception as exc:
                raise ConfigError(
                    f"plugin {ep.name!r} ({dist or ep.value}) failed to load: {exc!r}; fix or "
                    f"uninstall it, or list only the plugins to load in {LOAD_ENV}"
                ) from exc
            manager.register(plugin, name=ep.name)
    missing = sorted((wanted or set()) - installed)
    if missing:  # a misspelt or uninstalled plugin would otherwise just not be there
        raise ConfigError(
            f"{LOAD_ENV} names {', '.join(missing)}, which no installed plugin is called; "
            f"installed plugins: {', '.join(sorted(installed)) or 'none'}"
        )
    try:
        manager.check_pending()  # a misspelt hook would otherwise register nothing, silently
    except pluggy.PluginValidationError as exc:
        raise ConfigError(
            f"{exc}; the hooks a plugin may implement are "
            f"{', '.join(n for n in dir(Spec) if n.startswith('register_'))}"
        ) from exc
    return manager


def build_registry(manager: pluggy.PluginManager) -> Registry:
    """Ask every plugin to register what it brings (the built-ins run first: tryfirst)."""
    reg = Registry(plugins=[name for name, _ in manager.list_name_plugin()])
    _call(manager.hook.register_components, reg.component_refs.append)

    def add_command(name: str, ref: Any) -> None:
        if reg.command_refs.get(name, ref) is not ref:  # else one would hide the other
            raise ConfigError(
                f"two plugins register the command {name!r}; a plugin must choose another "
                f"name (or leave it out with {LOAD_ENV})"
            )
        reg.command_refs[name] = ref

    _call(manager.hook.register_commands, add_command)
    _call(manager.hook.register_settings, reg.settings.append)
    return reg


def _call(hook: Any, register: Callable[..., None]) -> None:
    """Call each plugin's implementation of `hook` in pluggy's order, naming one that fails."""
    for impl in reversed(hook.get_hookimpls()):
        try:
            impl.function(*[register for _ in impl.argnames])
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"plugin {impl.plugin_name!r} failed in {hook.name}: {exc!r}; fix or uninstall "
                f"it, or list only the plugins to load in {LOAD_ENV}"
            ) from exc


@cache
def registry() -> Registry:
    """The process's registry, built once (plugins load on the first call)."""
    return build_registry(plugin_manager())

"""Configuration: one TOML file in the data dir, overridden by env and flags.

Each section is a dataclass marked with `@section("name")` and registered through the plugin
registry (aether_box.plugins: a component's `settings_class`, or the `register_settings`
hook). One idiom for every section: fields with defaults, and ``resolve(data_dir)``, called
once the values are merged, fills defaults that live in the data dir and checks the values
(a ConfigError names the key and what it must be). The effective config is defaults < ``<data_dir>/config.toml`` < ``AETHER_BOX_<SECTION>_<KEY>``
environment variables < command-line overrides (``section.key=value``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import platformdirs
import tomli_w

from aether_box.errors import ConfigError
from aether_box.plugins import LOAD_ENV

__all__ = ["Config", "data_dir_from", "section", "section_name", "setting", "unusable_data_dir"]

HOME_ENV = "AETHER_BOX_HOME"
CONFIG_FILE = "config.toml"

T = TypeVar("T")
SECTION_ATTR = "__config_section__"


def section(name: str) -> Callable[[type[T]], type[T]]:
    """Mark a dataclass as the settings of config section `name` (register it as a plugin)."""

    def mark(cls: type[T]) -> type[T]:
        setattr(cls, SECTION_ATTR, name)
        return cls

    return mark


def section_name(cls: type) -> str:
    """The config section a settings dataclass was marked with."""
    name = getattr(cls, SECTION_ATTR, None)
    if not isinstance(name, str):
        raise ConfigError(f"{cls.__name__} is not marked as a config section (@section)")
    return name


def setting(
    default: Any = dataclasses.MISSING,
    *,
    min: float | None = None,  # noqa: A002 - reads as the range it is
    max: float | None = None,  # noqa: A002
    choices: typing.Collection[Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A settings field with its allowed range or choices, checked whenever config is read.

    ``max_message_mb: float = setting(64.0, min=0.001)``: a value outside gets an error
    that names the setting and the range.
    """
    metadata = {"min": min, "max": max, "choices": None if choices is None else tuple(choices)}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def data_dir_from(explicit: str | os.PathLike | None = None) -> Path:
    """The data dir: the explicit one, else $AETHER_BOX_HOME, else the platform's user data dir."""
    chosen = explicit or os.environ.get(HOME_ENV) or platformdirs.user_data_dir("aether-box")
    return Path(chosen).expanduser().resolve()


def unusable_data_dir(data_dir: Path, exc: OSError) -> ConfigError:
    """The one-line error for a data dir the box cannot write in (a file of that name, a
    read-only disk, no permission)."""
    return ConfigError(
        f"cannot use {data_dir} as the data dir ({exc.strerror or exc}): it must be a "
        "directory you can write to; fix that, or pass another --data-dir"
    )


class Config:
    """The effective configuration of one box, section by section."""

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        *,
        environ: typing.Mapping[str, str] | None = None,
        sections: typing.Mapping[str, type] | None = None,
    ) -> None:
        """`sections`: name -> settings dataclass (default: the plugin registry's)."""
        if sections is None:
            from aether_box.plugins import registry

            sections = registry().sections()
        self.sections = dict(sections)
        self.data_dir = data_dir_from(data_dir)
        self.path = self.data_dir / CONFIG_FILE
        layers = [
            (_read_toml(self.path), f"in {self.path}"),
            (_from_env(os.environ if environ is None else environ, self.sections), ""),
            (overrides or {}, "from --set"),
        ]
        self._raw: dict[str, dict[str, Any]] = {}
        # Where each value came from, for errors: the file, an env variable or --set.
        self._origin: dict[tuple[str, str], str] = {}
        for data, origin in layers:
            _check_sections(data, origin, self.sections)
            for name, values in data.items():
                for key, value in values.items():
                    self._raw.setdefault(name, {})[key] = value
                    self._origin[name, key] = origin or f"from ${_env_name(name, key)}"
        self._cache: dict[str, Any] = {}

    def get(self, cls: type[T]) -> T:
        """The settings object for a registered section dataclass."""
        name = next((n for n, c in self.sections.items() if c is cls), None)
        if name is None:
            raise ConfigError(f"{cls.__name__} is not a registered config section")
        if name not in self._cache:
            origins = {key: self._origin[name, key] for key in self._raw.get(name, {})}
            self._cache[name] = _build(cls, name, self._raw.get(name, {}), self.data_dir, origins)
        return self._cache[name]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every registered section with its effective values."""
        return {
            name: _plain(dataclasses.asdict(self.get(cls)))
            for name, cls in sorted(self.sections.items())
        }

    def to_toml(self) -> str:
        """The effective config as TOML, the same shape config.toml takes."""
        return tomli_w.dumps(self.as_dict())


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value`` (the value as a TOML literal, else a plain string)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(
            f"override {text!r} must look like section.key=value, e.g. bus.max_message_mb=8"
        )
    path, value = text.split("=", 1)
    name, key = path.strip().split(".", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return name, key, parsed


def overrides_from(pairs: typing.Iterable[str]) -> dict[str, dict[str, Any]]:
    """Group ``section.key=value`` strings into a nested override map."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, key, value = parse_override(pair)
        out.setdefault(name, {})[key] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        # utf-8-sig: Notepad and some Windows editors begin the file with a byte-order mark.
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix or delete it") from exc
    except OSError as exc:  # a directory of that name, no permission to read it
        raise ConfigError(
            f"cannot read {path} ({exc.strerror or exc}); make it a readable file or remove it"
        ) from exc


def _env_name(name: str, key: str) -> str:
    return f"AETHER_BOX_{name}_{key}".upper()


def _from_env(
    environ: typing.Mapping[str, str], sections: typing.Mapping[str, type]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, cls in sections.items():
        for field in dataclasses.fields(cls):
            value = environ.get(_env_name(name, field.name))
            if value is not None:
                out.setdefault(name, {})[field.name] = parse_override(
                    f"{name}.{field.name}={value}"
                )[2]
    return out


def _check_sections(data: dict[str, Any], origin: str, sections: typing.Mapping[str, type]) -> None:
    """Every top-level name a known section, each a table: else say what to write instead."""
    for name, values in data.items():
        if name in sections and isinstance(values, dict):
            continue
        if name in sections:
            raise ConfigError(
                f"{name} = {values!r} {origin}: [{name}] is a section, not a value; put its "
                f"keys under a [{name}] line (known keys: {sorted(_keys(sections[name]))})"
            )
        owners = [s for s, cls in sections.items() if name in _keys(cls)]
        if owners and not isinstance(values, dict):
            raise ConfigError(
                f"{name} = {values!r} {origin} is outside any section; it belongs under "
                f"{' or '.join(f'[{s}]' for s in owners)}"
            )
        hint = _did_you_mean(name, sections) or (
            f" (if a plugin adds [{name}], it is not installed, or {LOAD_ENV} leaves it out)"
        )
        raise ConfigError(
            f"unknown config section [{name}] {origin}{hint}; known sections: {sorted(sections)}"
        )


def _keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(
    cls: type[T], name: str, values: dict[str, Any], data_dir: Path, origins: dict[str, str]
) -> T:
    """The section's settings from `values`; `origins` says where each was set, for errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"unknown key {key!r} in [{name}] {origins[key]}{_did_you_mean(key, fields)}; "
            f"known keys: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        try:
            kwargs[key] = _coerce(f"{name}.{key}", hints[key], value)
            _check_range(f"{name}.{key}", fields[key], kwargs[key])
        except ConfigError as exc:  # say where the value was set: the file, env or --set
            raise ConfigError(f"{exc.message} ({origins[key]})") from None
    settings = cls(**kwargs)
    for key, spec in fields.items():
        _check_range(f"{name}.{key}", spec, getattr(settings, key))
    resolve = getattr(settings, "resolve", None)
    if resolve is not None:
        resolve(data_dir)  # sections may fill paths that depend on the data dir
    return settings


def _coerce(where: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    allowed = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for kind in allowed:
        kind_origin = typing.get_origin(kind) or kind
        if kind is type(None) and value is None:
            return None
        if isinstance(value, bool) and kind_origin is not bool:
            continue  # TOML's true is not the number 1
        if isinstance(value, float) and math.isnan(value):
            continue  # nan passes every range check: never a setting
        if kind_origin is float and isinstance(value, (int, float)):
            return float(value)
        if kind_origin is list and isinstance(value, list):
            item = (typing.get_args(kind) or (Any,))[0]
            item_type = typing.get_origin(item) or item
            if item is Any or all(isinstance(v, item_type) for v in value):
                return list(value)
            raise ConfigError(
                f"{where} must be a list, each item {_type_name(item)}, got {value!r}"
            )
        if kind_origin is Path and isinstance(value, str):
            return Path(value).expanduser()
        if isinstance(kind_origin, type) and isinstance(value, kind_origin):
            return value
    raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r}")


def _check_range(where: str, spec: dataclasses.Field, value: Any) -> None:
    low, high, choices = (spec.metadata.get(k) for k in ("min", "max", "choices"))
    if choices is not None and value not in choices:
        raise ConfigError(f"{where} must be one of {list(choices)}, got {value!r}")
    if value is None or not isinstance(value, int | float):
        return
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f"from {low:g} to {high:g}"
            if low is not None and high is not None
            else f"at least {low:g}"
            if low is not None
            else f"at most {high:g}"
        )
        raise ConfigError(f"{where} must be {bounds}, got {value!r}")


_PLAIN_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a text",
    bool: "true or false",
    Path: "a path",
    list: "a list",
    dict: "a table",
    type(None): "nothing",
}


def _type_name(hint: Any) -> str:
    """A type as a user reads it: "a number", "a text or nothing", not Python class names."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    return _PLAIN_NAMES.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value

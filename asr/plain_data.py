"""Dataclasses built from plain data (a YAML config, a model file's dictionaries), checked on the way in.

`build_dataclass(cls, values, where)` converts each value to its field's declared type (recursing into nested
dataclasses; an int where a float is declared, a list where a tuple is) and refuses, with a ConfigError naming the
key, a value of the wrong type and a key the dataclass does not have: a typo in a config must never train the wrong
model for a day.
"""
from __future__ import annotations

import dataclasses
import types
import typing

from asr.errors import ConfigError


def build_dataclass(cls, values: dict, where: str = ""):
    """Build dataclass `cls` from a dict, recursing into nested dataclasses; unknown keys raise ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(hints[name], value, key)
    return cls(**kwargs)


def _convert(hint, value, key: str):
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value or {}, key)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # e.g. `int | None`, `tuple[int, ...] | int`
        if value is None and type(None) in typing.get_args(hint):
            return None
        for option in typing.get_args(hint):
            if option is type(None):
                continue
            try:
                return _convert(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_type = typing.get_args(hint)[0] if typing.get_args(hint) else typing.Any
        items = [_convert(item_type, v, key) for v in value]
        return items if origin is list else tuple(items)
    if hint is float and not isinstance(value, bool):
        try:  # YAML reads "1e-3" (no dot) as a string; it is a float to anyone writing a learning rate
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if hint in (int, str, bool) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value

"""Generic helpers for typed configs: dataclasses <-> dicts, dotted overrides, key checks."""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem; the message names the key and how to fix it."""


def _suggest(key: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    if close:
        return f" Did you mean '{prefix}{close[0]}'?"
    return f" Valid keys: {', '.join(prefix + c for c in sorted(choices))}."


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass inside `tp` (plain or Optional[...]), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a (nested) dict; unknown keys raise ConfigError naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"Unknown config key '{prefix}{key}'.{_suggest(key, names, prefix)}")
        sub = _dataclass_type(hints[key])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{prefix}{key}.")
        else:
            _check_type(f"{prefix}{key}", hints[key], value)
        kwargs[key] = value
    return cls(**kwargs)


def _accepts(tp: Any, value: Any) -> bool:
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(tp))
    if origin is not None:
        return isinstance(value, origin)
    if dataclasses.is_dataclass(tp):
        return False  # a section given as something other than a mapping
    return isinstance(value, tp) if isinstance(tp, type) else True


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check_type(key: str, tp: Any, value: Any) -> None:
    """Values must have their field's declared type (an int is accepted where a float is)."""
    if not _accepts(tp, value):
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}.")


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain dict (tuples become lists so YAML/JSON stay simple)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _parse_value(raw: str):
    """YAML value; numbers like 3e-4 (strings in YAML 1.1) become floats."""
    value = yaml.safe_load(raw) if raw.strip() else None
    return float(value) if isinstance(value, str) and _FLOAT.match(value) else value


def apply_override(tree: dict, cls: type, override: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise ConfigError(f"Override '{override}' must look like key=value (e.g. optim.lr=2e-4).")
    dotted, raw = override.split("=", 1)
    value = _parse_value(raw)
    keys = dotted.strip().split(".")
    node, node_cls = tree, cls
    for depth, key in enumerate(keys):
        names = [f.name for f in dataclasses.fields(node_cls)] if node_cls else list(node)
        if node_cls and key not in names:
            path, parent = ".".join(keys[: depth + 1]), "".join(k + "." for k in keys[:depth])
            raise ConfigError(f"Unknown config key '{path}'.{_suggest(key, names, parent)}")
        if depth == len(keys) - 1:
            node[key] = value
            return
        hint = typing.get_type_hints(node_cls)[key] if node_cls else None
        node_cls = _dataclass_type(hint)
        if node_cls is None:
            raise ConfigError(f"'{'.'.join(keys[: depth + 1])}' is not a section; cannot set '{dotted}'.")
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]


def load_yaml(path: str) -> dict:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"Config file '{path}' not found (presets live in configs/).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping at the top level.")
    return data

"""Typed configuration and YAML loading.

A config file is YAML whose top-level sections mirror :class:`Config`. It may name a
``base:`` file (relative to itself, absolute, or a file of the project's experiments/: see
:func:`resolve_base`) whose values it overrides, and a ``profiles:`` mapping of named
override sets (``proxy``, ``proxy_long``, ``coco``) selected with ``profile=``; a profile may start
from another one (``extends: proxy``).
Overrides given as ``key.path=value`` strings are parsed as YAML scalars.
Every unknown key or wrongly typed value is a :class:`ConfigError` naming the file,
the dotted key and what was expected, with the nearest valid key suggested.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from tood.config.schema import ConfigError, Config
from tood.config.validate import validate_config


# ---------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of " + _type_name(typing.get_args(tp)[0])
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: got {value!r} (expected {_type_name(tp)})")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: unknown value {value!r} (expected {_type_name(tp)})")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: got {value!r} (expected {_type_name(tp)})")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: got {value!r} (expected a mapping of {tp.__name__} fields)")
        return _from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: got {value!r} (expected true or false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: got {value!r} (expected an integer)")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: got {value!r} (expected a number)")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: got {value!r} (expected a string)")
        return value
    raise TypeError(f"unsupported config type {tp!r}")


def _join(where: str, key: str) -> str:
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def _from_dict(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{_join(where, key)}: unknown key{_suggest(key, names)}")
        kwargs[key] = _convert(value, hints[key], _join(where, key))
    return cls(**kwargs)


def _suggest(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} (valid keys: {', '.join(names)})"


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) of a config dataclass, YAML-serialisable."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping (got {type(data).__name__})")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_dotted(data: dict, key: str, value: Any, where: str) -> None:
    """Set ``a.b.c`` in a nested dict, checking each part against :class:`Config`."""
    parts = key.split(".")
    cls: Any = Config
    node = data
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ConfigError(f"{where}: unknown key '{'.'.join(parts[: i + 1])}'{_suggest(part, names)}")
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            node[part] = value
            return
        inner = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        if not inner:
            raise ConfigError(f"{where}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        cls = inner[0]
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]


# The project's own configs: a grid or config copied elsewhere may still name `base: base.yaml`.
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def resolve_base(base: str, referrer: Path) -> Path:
    """The file a ``base:`` entry of ``referrer`` (a config or grid file) names: a path relative
    to ``referrer``'s folder, an absolute path, or the name of a file in the project's
    ``experiments/`` folder, tried in that order; a ConfigError lists the places tried."""
    tried = [Path(base)] if Path(base).is_absolute() else [referrer.parent / base, EXPERIMENTS / base]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{referrer}: base: {base!r} not found (tried {', '.join(map(str, tried))}; expected a config file "
                      "relative to this file, an absolute path, or the name of a file in the project's experiments/)")


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The merged mapping of a config file and its ``base:`` chain (profiles kept); each
    ``base:`` is found by :func:`resolve_base`."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: base: cycle through {' -> '.join(map(str, _seen))}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base: expected a file name (got {base!r})")
        data = deep_merge(load_raw(resolve_base(base, path), _seen + (path,)), data)
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.02"`` -> ``("train.lr", 0.02)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def resolve_profile(profiles: dict, name: str, where: str, _seen: tuple[str, ...] = ()) -> dict:
    """The override set of profile ``name``; a profile with ``extends: other`` is ``other``'s
    set with its own values merged over it (recursively)."""
    if name not in profiles:
        context = f"profiles.{_seen[-1]}.extends" if _seen else "profiles"
        raise ConfigError(f"{where}: {context}: unknown profile '{name}' (expected one of: {', '.join(profiles) or 'none defined'})")
    if name in _seen:
        raise ConfigError(f"{where}: profiles.{_seen[-1]}.extends: cycle {' -> '.join((*_seen, name))} (expected a chain ending in a profile without extends)")
    prof = profiles[name]
    if not isinstance(prof, dict):
        raise ConfigError(f"{where}: profiles.{name}: expected a mapping of config values (got {prof!r})")
    prof = dict(prof)
    parent = prof.pop("extends", None)
    if parent is None:
        return prof
    if not isinstance(parent, str):
        raise ConfigError(f"{where}: profiles.{name}.extends: expected a profile name (got {parent!r})")
    return deep_merge(resolve_profile(profiles, parent, where, (*_seen, name)), prof)


def build_config(
    data: dict,
    where: str,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Turn a raw mapping (with optional ``profiles``) into a validated :class:`Config`."""
    data = copy.deepcopy(data)
    profiles = data.pop("profiles", {}) or {}
    if profile is not None:
        data = deep_merge(data, resolve_profile(profiles, profile, where))
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value, f"{where}: override {key}")
    return validate_config(_from_dict(Config, data, f"{where}:"), f"{where}:")


def load_config(
    path: str | Path,
    profile: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Load a YAML config (following ``base:``), apply a profile and ``key=value`` overrides."""
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    return build_config(load_raw(path), str(path), profile, overrides)

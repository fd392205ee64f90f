"""The one config system: ``experiments/configs/<name>.py`` with ``get_config()``, plus overrides.

A config is an ``ml_collections.ConfigDict`` whose ``runner`` field names the module of
``experiments`` that runs it. Command-line overrides ``--config.a.b=value`` are parsed against
the type of the existing field: an unknown key or a value of the wrong type is a ``ConfigError``
naming the key, before anything runs or is written.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any

import ml_collections

from . import _mesh

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A config file, key or value that cannot be used."""


def available_configs() -> dict[str, Path]:
    """Names of the bundled configs (``fig2``, ``vae_digits``, ...) and their files."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.py")) if not p.stem.startswith("_")}


def resolve_config_path(name_or_path: str) -> Path:
    """A bundled config name (``fig2``) or a path to a config file."""
    path = Path(name_or_path)
    if path.suffix == ".py" and path.is_file():
        return path.resolve()
    configs = available_configs()
    if name_or_path in configs:
        return configs[name_or_path]
    if path.stem in configs and path.suffix == ".py":
        return configs[path.stem]
    close = difflib.get_close_matches(path.stem, configs, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown config {name_or_path!r}: not a file and not one of {sorted(configs)}{hint}"
    )


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """Import a config file and call its ``get_config()``; the result is locked (no new keys)."""
    path = resolve_config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"_mcgrad_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config()")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    if "runner" not in config:
        raise ConfigError(f"{path}: the config needs a 'runner' field naming its runner module")
    _mesh.add_defaults(config)
    config.lock()
    return config


def flat_items(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Every leaf of ``config`` under its dotted key (``grid.quadratic.num``), in config order."""
    items: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            items |= flat_items(v, f"{prefix}{k}.")
        else:
            items[f"{prefix}{k}"] = v
    return items


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    return list(flat_items(config, prefix))


def _parse_value(key: str, text: str, current: Any) -> Any:
    """Parse ``text`` as a value of the type of ``current``; ``ConfigError`` if it is not one."""

    def bad(kind: str) -> ConfigError:
        return ConfigError(f"--config.{key}: expected {kind}, got {text!r}")

    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise bad("a bool (true/false)")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise bad("an int") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise bad("a float") from None
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise bad(f"a Python literal of type {type(current).__name__}") from None
    if current is None:
        return value
    if isinstance(current, tuple | list):
        if not isinstance(value, tuple | list):
            raise bad(f"a {type(current).__name__}")
        return type(current)(value)
    if not isinstance(value, type(current)):
        raise bad(f"a {type(current).__name__}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """Apply ``key=value`` overrides (the ``--config.`` prefix already stripped), in place."""
    keys = _flat_keys(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--config.{item}: expected --config.<key>=<value>")
        key, text = item.split("=", 1)
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint} (keys: {', '.join(keys)})")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        value = _parse_value(key, text, node[leaf])
        with config.unlocked():
            node[leaf] = value


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists), for JSON."""
    return json.loads(config.to_json())


def config_from_dict(data: dict[str, Any]) -> ml_collections.ConfigDict:
    """Inverse of :func:`config_to_dict` (lists stay lists), locked."""
    config = ml_collections.ConfigDict(data)
    config.lock()
    return config

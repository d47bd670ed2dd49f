"""YAML + dotted command-line overrides, validated against a recipe's dataclass schema."""

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from aurora.config.schema import MOVED_KEYS


class ConfigError(ValueError):
    """A config that does not fit its schema; the message is one line naming the key."""


def _allowed_keys(schema: type, dotted_parent: str) -> list[str]:
    node: Any = schema
    for part in [p for p in dotted_parent.split(".") if p]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return []
        node = fields[part].type
        if not dataclasses.is_dataclass(node):
            default = fields[part].default_factory  # type: ignore[misc]
            node = type(default()) if callable(default) else node
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def _one_line(err: OmegaConfBaseException, schema: type) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    if isinstance(err, ConfigKeyError) or "not in" in msg:
        parent, _, leaf = key.rpartition(".")
        allowed = _allowed_keys(schema, parent)
        where = f"'{parent}'" if parent else "the top level"
        return ConfigError(f"config: unknown key '{key}'; keys allowed in {where}: {', '.join(allowed)}")
    if isinstance(err, MissingMandatoryValue):
        return ConfigError(f"config: '{key}' is required but not set (add it to the YAML or pass {key}=...)")
    return ConfigError(f"config: {key}: {msg}")


def peek_task(path: str | Path) -> str:
    """The ``task:`` of a YAML file, read before the recipe's schema is known."""
    data = _read_yaml(path)
    task = data.get("task")
    if not isinstance(task, str):
        raise ConfigError(f"config: {path} has no 'task:' naming the recipe (e.g. task: lm)")
    return task


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    return data


def _dotted_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def _refuse_moved_keys(path: str | Path, data: dict, overrides: list[str]) -> None:
    """A key that moved (``MOVED_KEYS``) is an error naming its new place, in the YAML or an override."""
    for key in _dotted_keys(data):
        if key in MOVED_KEYS:
            raise ConfigError(f"config: '{key}' in {path} is now '{MOVED_KEYS[key]}': move it there")
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in MOVED_KEYS:
            raise ConfigError(f"config: '{key}' is now '{MOVED_KEYS[key]}': pass {MOVED_KEYS[key]}={item.split('=', 1)[1]}")


def load_config(schema: type, path: str | Path, overrides: list[str] = ()) -> Any:
    """Merge ``path`` and ``key=value`` overrides onto ``schema``; return the dataclass object."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config: override '{item}' must look like key.sub=value")
        try:
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError as e:
            raise ConfigError(f"config: override '{item}' is not valid YAML ({getattr(e, 'problem', None) or e}): quote "
                              f"an interpolation or a string with YAML's special characters inside a list or mapping, "
                              f"e.g. key=['${{oc.env:VAR}}',b]") from None
    data = _read_yaml(path)
    _refuse_moved_keys(path, data, list(overrides))
    try:
        cfg = OmegaConf.structured(schema)
        cfg = OmegaConf.merge(cfg, OmegaConf.create(data), OmegaConf.from_dotlist(list(overrides)))
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            names = ", ".join(f"'{key}'" for key in missing)
            raise ConfigError(f"config: {names} required but not set (add to the YAML or pass {missing[0]}=...)")
        interpolations = _interpolations(cfg, OmegaConf.to_container(cfg, resolve=False))
        obj = OmegaConf.to_object(cfg)
        vars(obj)[_INTERPOLATIONS] = interpolations
        return obj
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise _one_line(e, schema) from None
    except ValueError as e:  # a dataclass's own __post_init__ validation
        raise ConfigError(f"config: {str(e).splitlines()[0]}") from None


_INTERPOLATIONS = "_aurora_interpolations"
"""The attribute of a loaded config that holds its interpolations (``_interpolations``)."""


def _interpolations(node: Any, raw: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> what was written, for every value of ``node`` given as an interpolation
    (``${oc.env:TOKEN}``, ``${run.dir}/x``); ``raw`` is ``node`` unresolved. A list holding one is
    taken whole."""
    found = {}
    for key in raw.keys() if isinstance(raw, dict) else range(len(raw)):
        dotted, value = f"{prefix}{key}", raw[key]
        if OmegaConf.is_interpolation(node, key):
            found[dotted] = value
        elif isinstance(value, dict):
            found.update(_interpolations(node[key], value, f"{dotted}."))
        elif isinstance(value, list) and _interpolations(node[key], value):
            found[dotted] = value
    return found


def saved_config(cfg: Any) -> DictConfig:
    """``cfg`` as a run records it (RUN/config.yaml, wandb's config): resolved, except the values
    given as interpolations, which stay as written, so that a secret read from the environment
    (``${oc.env:TOKEN}``) is never persisted. A reader of RUN/config.yaml resolves them again."""
    saved = OmegaConf.structured(cfg)
    for key, value in getattr(cfg, _INTERPOLATIONS, {}).items():
        OmegaConf.update(saved, key, value, merge=False)
    return saved


def to_yaml(cfg: Any) -> str:
    """The config as YAML, as written to RUN/config.yaml (``saved_config``)."""
    return OmegaConf.to_yaml(saved_config(cfg))

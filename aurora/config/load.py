"""YAML + dotted command-line overrides, validated against a recipe's dataclass schema."""

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException


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


def load_config(schema: type, path: str | Path, overrides: list[str] = ()) -> Any:
    """Merge ``path`` and ``key=value`` overrides onto ``schema``; return the dataclass object."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config: override '{item}' must look like key.sub=value")
    try:
        cfg = OmegaConf.structured(schema)
        cfg = OmegaConf.merge(cfg, OmegaConf.create(_read_yaml(path)), OmegaConf.from_dotlist(list(overrides)))
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            names = ", ".join(f"'{key}'" for key in missing)
            raise ConfigError(f"config: {names} required but not set (add to the YAML or pass {missing[0]}=...)")
        return OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise _one_line(e, schema) from None
    except ValueError as e:  # a dataclass's own __post_init__ validation
        raise ConfigError(f"config: {str(e).splitlines()[0]}") from None


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, as written to RUN/config.yaml."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))

"""Configs: pydantic models loaded from YAML, with ``--set key.sub=value`` overrides.

Every command's config is a :class:`Config` subclass. Unknown keys are errors that suggest the
closest valid key; a wrong type names the key and the expected type.

>>> class Train(Config):
...     epochs: int = 3
>>> class Run(Config):
...     train: Train = Train()
>>> _ = Run.model_rebuild()
>>> load_config(Run, None, ["train.epochs=5"]).train.epochs
5
>>> load_config(Run, None, ["train.epoch=5"])
Traceback (most recent call last):
...
trustmed.errors.InputError: unknown config key 'train.epoch' (from --set); did you mean 'train.epochs'?
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from trustmed.errors import InputError

__all__ = ["Config", "load_config", "parse_overrides", "apply_overrides"]

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every config: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise InputError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {item!r}: '{part}' is set both as a value and as a section")
        node[parts[-1]] = value
    return nested


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = apply_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names of the sub-model that ``loc`` (without its last part) points into."""
    cls: Any = model_cls
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        cls = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def _explain(model_cls: type[BaseModel], err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        valid = _fields_at(model_cls, loc)
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        prefix = ".".join(loc[:-1])
        hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
        if not close and valid:
            hint = f"; valid keys here: {', '.join(valid)}"
        return f"unknown config key '{key}' ({source}){hint}"
    got = first.get("input")
    return f"config key '{key}' ({source}): {first['msg'].lower()}, got {got!r}"


def load_config(
    model_cls: type[C], path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> C:
    """Load ``model_cls`` from an optional YAML file, then apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    source = "from --set"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(f"config file {path}: expected a mapping at the top level")
        data = loaded
        source = f"in {path} or --set"
    data = apply_overrides(data, parse_overrides(overrides))
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise InputError(_explain(model_cls, err, source)) from None

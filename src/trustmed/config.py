"""Configs: pydantic models loaded from YAML, with ``--set key.sub=value`` overrides.

Every command's config is a :class:`Config` subclass. Unknown keys are errors that suggest the
closest valid key; a wrong type names the key and the expected type; a YAML mapping that repeats a
key is an error (plain YAML keeps the last value silently).

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
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from trustmed.errors import InputError

__all__ = [
    "MIN_BOOT",
    "NBoot",
    "Config",
    "DuplicateKeyError",
    "apply_overrides",
    "apply_values",
    "config_fingerprint",
    "explain_error",
    "load_config",
    "parse_overrides",
    "safe_load_yaml",
]

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every config: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


MIN_BOOT = 200
"""Fewest bootstrap replicates for a 95 % percentile interval: its 2.5 % and 97.5 % quantiles then
rest on at least 5 replicates each (with 1 replicate the "interval" has zero width)."""


def _check_n_boot(value: int) -> int:
    if 0 < value < MIN_BOOT:
        raise ValueError(f"must be 0 (no confidence intervals) or at least {MIN_BOOT} for a 95% interval")
    return value


NBoot = Annotated[int, Field(ge=0), AfterValidator(_check_n_boot)]
"""A config's bootstrap replicate count: 0 (point estimates only) or at least :data:`MIN_BOOT`."""


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping may not repeat a key."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if first is not None:
                where = f"lines {first} and {line}" if first != line else f"both on line {line}"
                raise DuplicateKeyError(f"key {key!r} appears twice ({where})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load_yaml(text: str) -> Any:
    r"""``yaml.safe_load`` that refuses a mapping with a repeated key (:class:`DuplicateKeyError`).

    >>> safe_load_yaml("a: 1\nb: 2")
    {'a': 1, 'b': 2}
    >>> safe_load_yaml("a: 1\na: 2")
    Traceback (most recent call last):
    ...
    trustmed.config.DuplicateKeyError: key 'a' appears twice (lines 1 and 2)
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def config_fingerprint(cfg: BaseModel, exclude: dict | set | None = None) -> str:
    """SHA-256 of a config's values (without ``exclude``), to tell whether a checkpoint was made with it."""
    values = cfg.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


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
            value = safe_load_yaml(raw) if raw.strip() else ""
        except DuplicateKeyError as exc:
            raise InputError(f"--set {item!r}: {exc}") from None
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


def apply_values(
    cfg: C, values: dict[str, Any], *, source: str = "value", flag_names: dict[str, str] | None = None
) -> C:
    """A copy of ``cfg`` with ``values`` (keys dotted for nested fields) set and validated.

    With ``source="flag"`` an invalid value is named by its command-line flag: ``flag_names[key]``,
    else the key with dots and underscores as dashes (``student.width`` → ``--student-width``).

    >>> class Student(Config):
    ...     width: int = 8
    >>> class Run(Config):
    ...     student: Student = Student()
    >>> _ = Run.model_rebuild()
    >>> apply_values(Run(), {"student.width": 4}).student.width
    4
    >>> apply_values(Run(), {"student.width": -1.5}, source="flag")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    trustmed.errors.InputError: --student-width: input should be a valid integer, ... got -1.5
    """
    nested: dict[str, Any] = {}
    for key, value in values.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    try:
        # only the keys set so far, so that what was never set stays unset (a preset may fill it)
        return type(cfg).model_validate(apply_overrides(cfg.model_dump(exclude_unset=True), nested))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if source != "flag" or key not in values:
            raise InputError(explain_error(type(cfg), err, f"from a {source}")) from None
        flag = (flag_names or {}).get(key) or "--" + key.replace(".", "-").replace("_", "-")
        raise InputError(f"{flag}: {first['msg'].lower()}, got {first.get('input')!r}") from None


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


def explain_error(model_cls: type[BaseModel], err: ValidationError, source: str) -> str:
    """One line for a config's first validation error: the key, what was wrong, the value given."""
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
            loaded = safe_load_yaml(path.read_text(encoding="utf-8"))
        except DuplicateKeyError as exc:
            raise InputError(f"config file {path}: {exc}") from None
        except UnicodeDecodeError:
            raise InputError(f"config file {path} is not UTF-8 text") from None
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
        raise InputError(explain_error(model_cls, err, source)) from None

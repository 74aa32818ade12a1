"""Files in and out, safely.

- **Atomic writes** (:func:`atomic_write_bytes`): a file is written under a temporary name, synced
  and renamed, so a reader never sees half a file. New files get the process umask's permissions
  (``0644`` under ``umask 022``), like every other tool.
- **Reading user files** (:func:`read_json`, :func:`read_csv`, :func:`read_tensors`): a missing,
  truncated or damaged file is one :class:`~trustmed.errors.InputError` naming it. CSV headers with
  a repeated column name are refused.
- **No pickle is ever loaded.** Weights are read from safetensors, or from a ``.pt``/``.pth``/``.bin``
  state dict with ``torch.load(weights_only=True)``, which refuses any object that would run code.
  Training state (optimiser moments, RNG states, schedules) is written by :func:`write_state` as a
  safetensors file whose header carries the JSON skeleton of the state (:func:`read_state`): every
  tensor and array goes to safetensors, every number, string, list, tuple and dict to JSON.

>>> import tempfile, pathlib, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "state.safetensors"
>>> _ = write_state(path, {"step": 3, "betas": (0.9, 0.999), "state": {0: {"m": torch.ones(2)}}})
>>> state = read_state(path)
>>> state["betas"], state["state"][0]["m"].tolist()
((0.9, 0.999), [1.0, 1.0])
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustmed.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = [
    "PICKLE_SUFFIXES",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_finite",
    "file_sha256",
    "first_line",
    "process_umask",
    "read_csv",
    "read_json",
    "read_state",
    "read_tensors",
    "refuse_pickles",
    "to_jsonable",
    "write_json",
    "write_state",
]

PICKLE_SUFFIXES: tuple[str, ...] = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")
"""Suffixes of pickle-based files: trustmed never writes them into its own folders."""

_UMASK_LOCK = threading.Lock()


def process_umask() -> int:
    """The process umask (read from ``/proc`` where there is one; else set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a synced temporary file and a rename.

    The file is created with mode ``0666`` masked by the umask, as ``open()`` would create it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and NaN to JSON-friendly values (NaN and inf become ``None``)."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# reading user files
# ----------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing, undecodable or malformed file is an ``InputError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: not valid JSON ({first_line(exc)})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or first_line(exc)})") from None


def _duplicated_header(path: Path) -> list[str]:
    """Names that occur more than once in ``path``'s header row (pandas would rename them).

    Empty names are not counted: some official files end their header with empty fields (NIH's
    ``BBox_List_2017.csv``), which pandas names ``Unnamed: <i>``.
    """
    import pandas as pd

    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    names = [str(v) for v in header.iloc[0].tolist()] if len(header) else []
    seen: set[str] = set()
    return sorted({n for n in names if n.strip() and (n in seen or seen.add(n))})


def read_csv(
    path: str | os.PathLike,
    *,
    what: str = "CSV file",
    required: Sequence[str] = (),
    dtype: Mapping[str, Any] | None = None,
    allow_empty: bool = False,
    **kwargs: Any,
) -> pd.DataFrame:
    """Read a CSV (or ``.csv.gz``) with pandas; every way it can be bad is one ``InputError``.

    Refused, each with the file's name: a missing file, an empty file, bytes that are not UTF-8
    text, a malformed table, a header that names a column twice, a missing ``required`` column
    (the message lists the columns that are there) and, unless ``allow_empty``, a header with no rows.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        df = pd.read_csv(path, dtype=dict(dtype or {}), low_memory=False, **kwargs)
        duplicated = _duplicated_header(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty; expected a CSV with a header row") from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
            "save the CSV as UTF-8"
        ) from None
    except (pd.errors.ParserError, ValueError, OverflowError, EOFError) as exc:
        raise InputError(f"{path}: not a readable CSV ({first_line(exc)})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or first_line(exc)})") from None
    if duplicated:
        raise InputError(
            f"{path}: column name(s) {', '.join(repr(c) for c in duplicated)} appear more than once "
            "in the header; rename or drop the duplicates"
        )
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"available: {', '.join(map(str, df.columns))}"
        )
    if df.empty and not allow_empty:
        raise InputError(f"{path}: no rows (header only)")
    return df


def refuse_pickles(folder: str | os.PathLike, *, what: str = "trustmed folder") -> None:
    """Refuse a folder written by trustmed that holds a pickle-format file.

    trustmed never writes ``.pkl``/``.pt``/``.pth``/``.bin``/``.ckpt`` files into its own
    checkpoint folders, so one there was put by something else (an older version, another tool, or
    a planted payload). It is never loaded; the folder is refused with the file's name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for item in sorted(folder.iterdir()):
        if item.suffix.lower() in PICKLE_SUFFIXES:
            raise InputError(
                f"{item}: a pickle-format file in a {what}; trustmed never writes or loads these, so the "
                "folder is not used (remove the file if you know where it came from)"
            )


def _weights_only_load(path: Path) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, OSError) as exc:
        raise InputError(
            f"{path}: not a weights-only PyTorch file, so it was not loaded ({first_line(exc)[:160]})"
        ) from None


def read_tensors(path: str | os.PathLike, *, what: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors of a weights file: ``.safetensors``, or a ``.pt``/``.pth``/``.bin`` state dict.

    The PyTorch formats are read with ``torch.load(weights_only=True)``, which refuses any pickled
    object that is not a tensor or a plain container; a ``{"state_dict": {...}}`` wrapper is
    unwrapped. A missing, truncated or damaged file, or one that holds something other than named
    tensors, is an ``InputError`` naming it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"{path}: damaged or not a safetensors file ({first_line(exc)})") from None
    else:
        state = _weights_only_load(path)
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise InputError(f"{path}: expected a state dict (names → tensors), got {type(state).__name__}")
        tensors = dict(state)
    bad = next((k for k, v in tensors.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise InputError(f"{path}: entry {bad!r} is not a tensor; expected a state dict of tensors")
    return tensors


def check_finite(tensors: Mapping[str, torch.Tensor], where: str | os.PathLike) -> None:
    """Refuse weights with NaN or infinite values (a diverged or damaged model), naming the tensor."""
    import torch

    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{where}: tensor {name!r} has NaN or infinite values")


# ----------------------------------------------------------------------------------------------
# training state: safetensors + a JSON skeleton, never a pickle
# ----------------------------------------------------------------------------------------------

_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__")


def _encode(obj: Any, tensors: dict[str, Any], where: str) -> Any:
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        items = []
        for key, value in obj.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise TypeError(f"{where}: a dict key of type {type(key).__name__} cannot be saved")
            items.append([key, _encode(value, tensors, f"{where}[{key!r}]")])
        return {"__dict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, where) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors, where) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be saved in a state file")


def _decode(node: Any, tensors: Mapping[str, Any]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) != 1 or next(iter(node)) not in _TAGS:
        raise ValueError(f"unknown entry {sorted(node)[:3]}")
    tag, value = next(iter(node.items()))
    if tag == "__tensor__":
        return tensors[value]
    if tag == "__ndarray__":
        return tensors[value].numpy()
    if tag == "__tuple__":
        return tuple(_decode(v, tensors) for v in value)
    return {key: _decode(v, tensors) for key, v in value}


def write_state(path: str | os.PathLike, state: Any) -> Path:
    """Write a state (nested dicts, lists, tuples, numbers, strings, tensors, numpy arrays) atomically.

    Tensors and arrays go into the safetensors body; the skeleton, as JSON, into its header. Dict keys
    keep their type (an optimiser's integer parameter ids stay integers).
    """
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    skeleton = json.dumps(_encode(state, tensors, Path(path).name))
    return atomic_write_bytes(path, save(tensors, metadata={"trustmed_state": skeleton}))


def read_state(path: str | os.PathLike) -> Any:
    """Read a state written by :func:`write_state`; a damaged file is an ``InputError`` naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"state file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            skeleton = (fh.metadata() or {}).get("trustmed_state")
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - not a dict
        if skeleton is None:
            raise ValueError("no trustmed state in its header")
        return _decode(json.loads(skeleton), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InputError(f"{path}: damaged or not a trustmed state file ({first_line(exc)})") from None

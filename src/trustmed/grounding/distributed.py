"""Grounding a table on several processes (``torchrun`` / ``accelerate launch``) with the results of one.

The table's rows are split into contiguous shards whose boundaries fall on multiples of the
grounder's ``batch_size`` (:func:`shard_bounds`), so every UNet batch holds the same pairs as in a
one-process run and each map is computed exactly as that run computes it. Row order is restored
when the shards are gathered.

Two entry points:

* :func:`ground_table_distributed` is :func:`~trustmed.grounding.zero_shot.ground_table` on every
  process: each one grounds its shard and every process receives every map. Gathering maps costs
  memory on every process (all maps, plus a flat float32 copy of every process's maps while they
  travel); use it for tables whose maps fit in memory several times over.
* :func:`evaluate_table_distributed` is what ``trustmed ground eval`` uses. Each process grounds its
  shard batch by batch and keeps no more maps than the cases figure may need: it scores each batch
  at once (:func:`~trustmed.grounding.zero_shot.score_table` and the laterality checks, which need
  only the map of the pair and the boxes of its partner) and keeps only its best and worst
  ``n_cases`` maps. Gathered to every process: the per-pair score rows and laterality results
  (a few hundred bytes a pair), from which every process computes the same summary as
  :func:`~trustmed.grounding.pipeline.evaluate_maps`. Gathered to the main process only: the maps of
  the ``2 · n_cases`` pairs the cases figure draws (a map the owner no longer holds, possible with
  tied scores, is recomputed from its batch). With MS-CXR (maps of about 2500 × 3000 float32,
  ~30 MB, over 1 000 pairs) a process holds about ``2 · n_cases + batch_size`` maps rather than its
  whole shard, and the main process receives ``2 · n_cases`` of them.

With one process no collective is used and the results are those of the one-process code path.

Nothing travels pickled (no pickle is ever loaded): :func:`gather_json` sends small structured data
as UTF-8 JSON in uint8 tensors, :func:`gather_arrays` sends maps as flat float32 tensors after a JSON
header of their shapes. Both are exact: floats round-trip through JSON unchanged (NaN included) and
float32 maps bit for bit.

>>> shard_bounds(11, 2, batch_size=4)
[(0, 4), (4, 11)]
>>> shard_bounds(3, 4)
[(0, 0), (0, 1), (1, 2), (2, 3)]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trustmed.errors import InputError

__all__ = [
    "gather_json",
    "gather_arrays",
    "ShardedEval",
    "process_state",
    "shard_bounds",
    "case_rows",
    "ground_table_distributed",
    "evaluate_table_distributed",
]

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("cnr", "miou", "auroc", "pointing_game")


def gather_json(obj: Any, *, to_main_only: bool = False) -> list[Any]:
    """``obj`` of every process, in rank order, sent as JSON (nothing pickled).

    ``obj`` is made of dicts with string keys, lists, tuples, strings, ints, floats, bools, ``None``,
    numpy scalars and small numpy arrays; numpy values arrive as the Python values they hold (a
    float32 scalar as the float of its exact value), tuples as lists. Floats arrive exactly as sent,
    NaN and ±inf included. Each process's JSON travels as a uint8 tensor, padded to the longest.

    With ``to_main_only`` only the main process (rank 0) receives: the others get ``[]``. Every
    process must call it. Outside a launch of several processes (no process group, or a group of one)
    no collective is used and the result is ``[obj]``, ``obj`` itself.
    """
    if _world_size() <= 1:
        return [obj]
    return _gather_json(obj, to_main_only=to_main_only)


def gather_arrays(arrays: Sequence[np.ndarray], *, to_main_only: bool = True) -> list[np.ndarray]:
    """The arrays of every process, in rank order and one list (each process's ``arrays`` in turn),
    sent as float32 tensors (nothing pickled).

    The arrays may differ in shape and count from process to process (a process may send none).
    Their shapes travel first (:func:`gather_json`), then each process's values as one flat float32
    tensor, padded to the longest, which is reshaped on receipt: float32 arrays arrive bit for bit
    (NaN included); other dtypes are sent and returned as float32. By default only the main process
    (rank 0) receives (the others get ``[]``), so that no other process holds every map; with
    ``to_main_only=False`` every process does. Every process must call it. Outside a launch of
    several processes (no process group, or a group of one) the result is ``list(arrays)``, the arrays
    themselves.
    """
    if _world_size() <= 1:
        return list(arrays)
    return _gather_arrays(arrays, to_main_only=to_main_only)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _collective_device():
    """The device of this process's collective tensors: its CUDA device under NCCL, else the CPU (gloo)."""
    import torch
    import torch.distributed as dist

    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _plain(obj: Any) -> Any:
    """``obj`` with numpy values made Python ones and tuples lists, so that JSON holds it exactly; a
    ``TypeError`` for anything JSON would not give back as it was (objects, non-string keys)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, str | bool | int | float):
        return obj
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"JSON keys must be strings, got {sorted({type(k).__name__ for k in obj})}")
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    raise TypeError(f"{type(obj).__name__} cannot be sent as JSON")


def _json_bytes(obj: Any) -> bytes:
    # allow_nan writes NaN and ±inf as NaN / Infinity / -Infinity, which json.loads reads back
    return json.dumps(_plain(obj), allow_nan=True, separators=(",", ":")).encode("utf-8")


def _from_json_bytes(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _gather_flat(flat, *, to_main_only: bool) -> list:
    """The 1-D CPU tensor ``flat`` of every process, in rank order, as CPU tensors of their own lengths
    (``[]`` on the other processes when ``to_main_only``). Lengths are all-gathered first; the tensors
    travel padded to the longest, on :func:`_collective_device`."""
    import torch
    import torch.distributed as dist

    device = _collective_device()
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([flat.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    lengths = [int(n.item()) for n in sizes]
    receives = not to_main_only or rank == 0
    longest = max(lengths)
    if longest == 0:  # nothing to send anywhere (all ranks see the same lengths)
        return [flat.new_zeros(0) for _ in lengths] if receives else []
    padded = torch.zeros(longest, dtype=flat.dtype, device=device)
    padded[: flat.numel()] = flat.to(device)
    if to_main_only:
        out = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
        dist.gather(padded, out, dst=0)
    else:
        out = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(out, padded)
    del padded
    if not receives:
        return []
    return [t[:n].cpu() for t, n in zip(out, lengths, strict=True)]


def _gather_json(obj: Any, *, to_main_only: bool) -> list[Any]:
    import torch

    data = torch.frombuffer(bytearray(_json_bytes(obj)), dtype=torch.uint8)
    received = _gather_flat(data, to_main_only=to_main_only)
    return [_from_json_bytes(t.numpy().tobytes()) for t in received]


def _gather_arrays(arrays: Sequence[np.ndarray], *, to_main_only: bool) -> list[np.ndarray]:
    import torch

    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    shapes = _gather_json([list(a.shape) for a in arrays], to_main_only=to_main_only)
    flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)
    received = _gather_flat(torch.from_numpy(flat), to_main_only=to_main_only)
    del flat
    out = []
    for rank_shapes in shapes:
        values, offset = received.pop(0).numpy(), 0
        for shape in rank_shapes:
            n = int(np.prod(shape, dtype=np.int64))
            # a copy of its own, so a map does not keep its process's whole buffer alive
            out.append(values[offset : offset + n].reshape(shape).copy())
            offset += n
    return out


@dataclass
class ShardedEval:
    """What :func:`evaluate_table_distributed` returns.

    Attributes
    ----------
    scores : per-pair metrics of every row, in row order (on every process).
    summary : :func:`~trustmed.metrics.grounding.summarize` of ``scores`` with ``laterality_accuracy``
        and ``n_laterality_pairs``, as :func:`~trustmed.grounding.pipeline.evaluate_maps` returns
        it (on every process).
    case_maps : row position → heatmap for the rows of :func:`case_rows` (main process; empty on
        the others).
    timing : ``total`` (wall seconds of the sharded grounding: its slowest process), ``pairs`` (all
        pairs), ``seconds_per_pair``, ``processes`` and ``process_totals`` (seconds per process).
    """

    scores: pd.DataFrame
    summary: dict
    case_maps: dict[int, np.ndarray] = field(default_factory=dict)
    timing: dict = field(default_factory=dict)


def shard_bounds(n_rows: int, n_processes: int, batch_size: int = 1) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` row ranges, one per process, cut at multiples of ``batch_size``.

    The ``ceil(n_rows / batch_size)`` batches are dealt out as evenly as possible (earlier processes
    get fewer when they do not divide); a process may get none.
    """
    bs = max(1, int(batch_size))
    n_batches = -(-n_rows // bs)
    cuts = [min(n_rows, (p * n_batches // n_processes) * bs) for p in range(n_processes + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def case_rows(scores: pd.DataFrame, n: int) -> list[int]:
    """Row positions of the ``n`` best and ``n`` worst pairs by mIoU (NaN counts as -1), best first,
    then worst first: the pairs ``trustmed ground eval``'s cases figure draws."""
    order = scores["miou"].fillna(-1).to_numpy().argsort()
    return [int(i) for i in (*order[::-1][:n], *order[:n])]


def process_state():
    """accelerate's ``PartialState`` of this process, in the process group of a distributed launch.

    Call it before the model is placed: on GPUs it selects this process's device. Without a GPU
    (or under ``accelerate launch --cpu``) a launch of several processes joins a gloo group on the
    CPU; accelerate's default would otherwise leave each ``torchrun`` process on its own, each
    grounding the whole table.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    several = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (several and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if several and state.num_processes == 1:
        log.warning(
            "WORLD_SIZE is %s but accelerate was set up for one process before grounding started; "
            "every process grounds the whole table (only the main one writes)",
            os.environ["WORLD_SIZE"],
        )
    return state


def _fingerprint(table: pd.DataFrame, texts: Sequence[str] | None) -> str:
    """Identity of the table's pairs (not its paths, which may differ between processes)."""
    keys = {c: [str(x) for x in table[c]] for c in ("pair_id", "image_id", "category") if c in table}
    keys["text"] = [str(x) for x in (table["text"] if texts is None else texts)]
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()


def _failure(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}", "input": isinstance(exc, InputError)}


def _raise_failures(payloads: list[dict], rank: int, mine: BaseException | None) -> None:
    """Raise on every process when any failed: its own exception where it failed, an
    :class:`InputError` (bad input) or ``RuntimeError`` naming the failed process elsewhere."""
    failed = [(r, p) for r, p in enumerate(payloads) if "error" in p]
    if not failed:
        return
    if mine is not None:
        raise mine
    r, p = failed[0]
    message = f"process {r} of the distributed run failed: {p['error']}"
    raise (InputError if p["input"] else RuntimeError)(message)


def _all_gather_checked(state, work: Callable[[], Any]) -> list[Any]:
    """Run ``work()`` here and gather its result (JSON-able, :func:`gather_json`) from every process,
    in rank order.

    Every process takes part in the gather even when its own work failed (a result JSON cannot hold
    counts as a failure), so that a failure on one process stops all of them instead of leaving the
    others waiting in a collective.
    """
    mine = None
    try:
        payload = {"result": _plain(work())}
    except Exception as exc:
        mine, payload = exc, _failure(exc)
    payloads = gather_json(payload)
    _raise_failures(payloads, state.process_index, mine)
    return [p["result"] for p in payloads]


def _check_same_table(state, table: pd.DataFrame, texts: Sequence[str] | None) -> None:
    prints = _all_gather_checked(state, lambda: _fingerprint(table, texts))
    if len(set(prints)) > 1:
        raise InputError(
            "the processes of the distributed run read different tables (pair ids or sentences differ); "
            "every process must see the same data"
        )


def _timing(totals: list[float], n_pairs: int) -> dict:
    total = max(totals) if totals else 0.0
    return {
        "total": total,
        "pairs": n_pairs,
        "seconds_per_pair": total / max(n_pairs, 1),
        "processes": len(totals),
        "process_totals": totals,
    }


def ground_table_distributed(grounder, table: pd.DataFrame, *, texts: list[str] | None = None) -> list:
    """Heatmaps for every row of ``table``, in row order, on every process; each process grounds one
    shard (:func:`shard_bounds`).

    With one process this is :func:`~trustmed.grounding.zero_shot.ground_table`. With more, the maps
    are gathered with :func:`gather_arrays` (float32, bit for bit, any shape, NaN included): every
    process ends up holding every map, so keep this to tables whose maps fit in each process's memory
    (see :func:`evaluate_table_distributed` for scoring a large table). ``grounder.timing_`` becomes
    the run's: ``total`` the slowest process's seconds, ``pairs`` all pairs.
    """
    from trustmed.grounding.zero_shot import ground_table

    state = process_state()
    if state.num_processes <= 1:
        return ground_table(grounder, table, texts=texts)
    if texts is not None and len(texts) != len(table):
        raise InputError(f"{len(texts)} texts for a table of {len(table)} rows; expected one per row")
    _check_same_table(state, table, texts)
    start, stop = shard_bounds(len(table), state.num_processes, grounder.config.batch_size)[
        state.process_index
    ]

    maps: list[np.ndarray] = []

    def work() -> float:
        t0 = time.perf_counter()
        shard_texts = None if texts is None else list(texts)[start:stop]
        if stop > start:
            maps.extend(ground_table(grounder, table.iloc[start:stop], texts=shard_texts))
        return time.perf_counter() - t0

    seconds = _all_gather_checked(state, work)  # raises on every process when one failed
    grounder.timing_ = _timing(seconds, len(table))
    return gather_arrays(maps, to_main_only=False)


def _frame_to_json(frame: pd.DataFrame) -> dict:
    """A data frame of plain values (score rows) as JSON, with its dtypes (:func:`_frame_from_json`)."""
    return {
        "columns": [str(c) for c in frame.columns],
        "dtypes": [str(d) for d in frame.dtypes],
        "rows": _plain(frame.to_numpy(dtype=object).tolist()),
    }


def _frame_from_json(data: dict) -> pd.DataFrame:
    frame = pd.DataFrame(data["rows"], columns=data["columns"])
    return frame.astype(dict(zip(data["columns"], data["dtypes"], strict=True)))


def _shard_to_json(frames: list[pd.DataFrame], checks: dict[tuple[int, int], float], seconds: float) -> dict:
    return {
        "frames": [_frame_to_json(f) for f in frames],
        "checks": [[i, j, v] for (i, j), v in checks.items()],
        "seconds": seconds,
    }


def _shard_from_json(data: dict) -> tuple[list[pd.DataFrame], dict[tuple[int, int], float], float]:
    checks = {(i, j): v for i, j, v in data["checks"]}
    return [_frame_from_json(f) for f in data["frames"]], checks, data["seconds"]


class _Keeper:
    """The maps of the best and worst ``n`` rows by mIoU seen so far on this process."""

    def __init__(self, n: int):
        self.n = n
        self.value: dict[int, float] = {}
        self.maps: dict[int, np.ndarray] = {}

    def add(self, rows: Sequence[int], maps: Sequence[np.ndarray], miou: Sequence[float]) -> None:
        if self.n <= 0:
            return
        for i, heat, v in zip(rows, maps, miou, strict=True):
            self.value[i] = -1.0 if not np.isfinite(v) else float(v)
            self.maps[i] = heat
        order = sorted(self.maps, key=lambda i: (self.value[i], i))
        keep = set(order[: self.n]) | set(order[-self.n :])
        self.maps = {i: m for i, m in self.maps.items() if i in keep}


def evaluate_table_distributed(
    grounder,
    table: pd.DataFrame,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    n_cases: int = 4,
) -> ShardedEval:
    """Ground and score every row of ``table`` (sharded over the processes of a distributed launch).

    The scores and summary are those of ``evaluate_maps(table, ground_table(grounder, table))``
    on every process; the main process also gets the maps of :func:`case_rows` (see the module
    docstring for what travels where). ``grounder.timing_`` is set to :attr:`ShardedEval.timing`.
    """
    from trustmed.data.mscxr import boxes_to_mask
    from trustmed.grounding.zero_shot import ground_table, score_table
    from trustmed.metrics.grounding import laterality_correct, laterality_pairs, summarize

    state = process_state()
    n_proc, rank = state.num_processes, state.process_index
    if n_proc > 1:
        _check_same_table(state, table, None)
    bs = max(1, int(grounder.config.batch_size))
    start, stop = shard_bounds(len(table), n_proc, bs)[rank]
    pairs = laterality_pairs(table)
    partners: dict[int, list[int]] = {}
    for i, j in pairs:
        partners.setdefault(i, []).append(j)
    keeper = _Keeper(n_cases)

    def ground_shard():
        frames, checks, seconds = [], {}, 0.0
        for lo in range(start, stop, bs):
            hi = min(lo + bs, stop)
            chunk = table.iloc[lo:hi]
            maps = ground_table(grounder, chunk)
            seconds += grounder.timing_["total"]
            scores = score_table(chunk, maps)
            frames.append(scores)
            for i, heat in zip(range(lo, hi), maps, strict=True):
                # the two rows of a laterality pair are one image, so the maps share its shape
                h, w = heat.shape
                for j in partners.get(i, []):
                    described = boxes_to_mask(table.boxes.iloc[i], h, w)
                    other = boxes_to_mask(table.boxes.iloc[j], h, w)
                    checks[(i, j)] = laterality_correct(heat, described, other)
            keeper.add(range(lo, hi), maps, scores["miou"].to_numpy(dtype=float))
        return frames, checks, seconds

    if n_proc > 1:
        gathered = _all_gather_checked(state, lambda: _shard_to_json(*ground_shard()))
        shards = [_shard_from_json(data) for data in gathered]
    else:
        shards = [ground_shard()]
    frames = [f for shard_frames, _, _ in shards for f in shard_frames]
    scores = pd.concat(frames, ignore_index=True) if frames else score_table(table.iloc[:0], [])
    checks = {k: v for _, shard_checks, _ in shards for k, v in shard_checks.items()}
    timing = _timing([seconds for _, _, seconds in shards], len(table))

    summary = summarize(scores, metrics=list(metrics), n_boot=n_boot, seed=seed)
    correct = [checks[p] for p in pairs]
    summary["laterality_accuracy"] = float(np.mean(correct)) if correct else None
    summary["n_laterality_pairs"] = len(pairs)

    wanted = sorted(set(case_rows(scores, n_cases))) if n_cases > 0 and len(scores) else []
    mine = [i for i in wanted if start <= i < stop]

    def my_case_maps() -> dict[int, np.ndarray]:
        found = {i: keeper.maps[i] for i in mine if i in keeper.maps}
        # a tie in mIoU may pick a row this process did not keep: recompute its whole batch, so the
        # map is the one computed the first time
        for lo in sorted({start + (i - start) // bs * bs for i in mine if i not in found}):
            hi = min(lo + bs, stop)
            maps = ground_table(grounder, table.iloc[lo:hi])
            found.update({i: m for i, m in zip(range(lo, hi), maps, strict=True) if i in mine})
        return found

    case_maps = my_case_maps() if n_proc <= 1 else _gather_to_main(state, my_case_maps)
    grounder.timing_ = timing
    return ShardedEval(scores=scores, summary=summary, case_maps=case_maps, timing=timing)


def _gather_to_main(state, work: Callable[[], dict[int, np.ndarray]]) -> dict[int, np.ndarray]:
    """Merge the row → map dicts ``work()`` returns on every process, on the main process only (``{}``
    elsewhere).

    The row numbers travel as JSON (:func:`gather_json`) and the maps as float32 tensors
    (:func:`gather_arrays`), both to rank 0 alone, so the other processes never hold the maps of other
    shards. Every process takes part in both gathers, failed or not (a failed one sends no maps); no
    collective follows, so a process that fails raises its own exception and the main process raises
    for any failure it receives.
    """
    mine, maps = None, []
    try:
        found = work()
        payload, maps = {"result": [int(i) for i in found]}, list(found.values())
    except Exception as exc:
        mine, maps, payload = exc, [], _failure(exc)
    # Tensors, not pickled objects: the maps differ in shape from image to image, so their shapes go
    # first (JSON) and each process's maps as one flat float32 tensor padded to the longest process's;
    # rank 0 briefly holds (processes × that length) floats besides the maps, and NaN and float32 arrive
    # bit for bit.
    received = gather_json(payload, to_main_only=True)
    arrays = gather_arrays(maps, to_main_only=True)
    if not state.is_main_process:
        if mine is not None:
            raise mine
        return {}
    _raise_failures(received, state.process_index, mine)
    return dict(zip([i for p in received for i in p["result"]], arrays, strict=True))

"""Grounding on several processes: ``trustmed ground eval`` on 2 gloo processes writes the metrics and
per-pair table of 1 process; the shards, the one-process path, failures on one process, and the
pickle-free gathers (JSON and float32 tensors) they travel by."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trustmed.errors import InputError
from trustmed.grounding import distributed
from trustmed.grounding.distributed import (
    case_rows,
    evaluate_table_distributed,
    ground_table_distributed,
    shard_bounds,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fixtures.torchrun import launch_env, torchrun_two  # noqa: E402

# 20 SynthCXR images give 8 test pairs; the first 7 (an odd count) hold a laterality pair (rows 3
# and 4). In batches of 2 the 4 batches are shared 2 + 2, so the shards are rows 0-3 and 4-6:
# unequal, with the laterality pair across them.
N_PAIRS = 7
SETS = {
    "grounding.num_steps": 20,
    "grounding.batch_size": 2,
    "data.n_images": 20,
    "data.limit": N_PAIRS,
    "n_boot": 200,
    "n_cases": 2,
}
TIMEOUT = 240


def _eval_args(out):
    sets = [x for key, value in SETS.items() for x in ("--set", f"{key}={value}")]
    return ["-m", "trustmed.cli", "ground", "eval", "--out", out, "--quiet", *sets]


def _numbers(tree, prefix=""):
    """Every leaf of a JSON tree by its path (the run's timing left out)."""
    if isinstance(tree, dict):
        return {
            k: v
            for key, sub in tree.items()
            if key != "timing"
            for k, v in _numbers(sub, f"{prefix}/{key}").items()
        }
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{prefix}/{i}").items()}
    return {prefix: tree}


def _assert_same_leaves(one: dict, two: dict):
    a, b = _numbers(one), _numbers(two)
    assert a.keys() == b.keys()
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) or isinstance(y, float):
            same = (x is None and y is None) or math.isclose(x, y, rel_tol=0, abs_tol=1e-6)
            same = same or (x is not None and y is not None and math.isnan(x) and math.isnan(y))
            assert same, f"{key}: {x} != {y}"
        else:
            assert x == y, f"{key}: {x!r} != {y!r}"


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run(
        [sys.executable, *map(str, _eval_args(one))],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert single.returncode == 0, single.stderr[-4000:]
    torchrun_two(_eval_args(two))

    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1["n_pairs"] == m2["n_pairs"] == N_PAIRS and N_PAIRS % 2 == 1
    assert m1["n_laterality_pairs"] == 2 and m1["laterality_accuracy"] is not None
    assert m1["timing"]["processes"] == 1
    assert m2["timing"]["processes"] == 2 and m2["timing"]["pairs"] == N_PAIRS
    assert len(m2["timing"]["process_totals"]) == 2
    # per class, macro, micro (values and bootstrap CIs), laterality, warnings
    _assert_same_leaves(m1, m2)

    p1, p2 = pd.read_csv(one / "pairs.csv"), pd.read_csv(two / "pairs.csv")
    pd.testing.assert_frame_equal(p1, p2, check_exact=False, rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_csv(one / "classes.csv"), pd.read_csv(two / "classes.csv"))
    assert (two / "cases.png").stat().st_size > 1000
    # only the main process wrote: one --out, its lock, no staging folder left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".one.lock", ".two.lock", "one", "two"]


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import numpy as np

    from trustmed.data.mscxr import load_mscxr
    from trustmed.errors import InputError
    from trustmed.grounding import distributed
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder, ground_table

    out, model, data = map(Path, sys.argv[1:4])
    state = distributed.process_state()
    rank = state.process_index
    table = load_mscxr(data, split="test").head(7)
    ldm = load_ldm(model)
    grounder = ZeroShotGrounder(ldm, GroundingConfig(num_steps=5, batch_size=2))
    maps = distributed.ground_table_distributed(grounder, table)
    timing = grounder.timing_
    reference = ground_table(grounder, table)

    def fail_on_rank_1():
        if rank == 1:
            raise InputError("bad row on rank 1")
        return rank

    try:
        distributed._all_gather_checked(state, fail_on_rank_1)
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"

    # the gathers themselves: payloads of unequal lengths, maps of unequal shapes and counts (none on
    # one process), NaN with a payload, numpy scalars
    def obj_of(r):
        return {"rank": np.int64(r), "x": [float("nan"), np.float32(0.1), 1 / 3, -np.inf], "t": "é" * 9 * r}

    def arrays_of(r):
        rng = np.random.default_rng(r)
        out = [rng.standard_normal(s).astype(np.float32) for s in ([(3, 5), (2, 7, 2)], [(40, 3)])[r]]
        out[0].flat[1] = np.uint32(0x7FC00123).view(np.float32)
        return out

    def bits(arrays):
        return [(a.dtype.str, a.shape, a.view(np.uint32).tobytes().hex()) for a in arrays]

    def only_rank_0(arrays):
        return arrays if rank == 0 else []

    want_json = json.dumps([distributed._plain(obj_of(r)) for r in (0, 1)])
    want_all = bits(arrays_of(0) + arrays_of(1))
    helpers = {
        "json_all": json.dumps(distributed.gather_json(obj_of(rank))) == want_json,
        "json_main": json.dumps(distributed.gather_json(obj_of(rank), to_main_only=True))
        == (want_json if rank == 0 else "[]"),
        "arrays_all": bits(distributed.gather_arrays(arrays_of(rank), to_main_only=False)) == want_all,
        "arrays_main": bits(distributed.gather_arrays(arrays_of(rank))) == (want_all if rank == 0 else []),
        "arrays_one_empty": bits(distributed.gather_arrays(only_rank_0(arrays_of(0)), to_main_only=False))
        == bits(arrays_of(0)),
        "arrays_none": distributed.gather_arrays([], to_main_only=False) == [],
    }
    record = {
        "processes": state.num_processes,
        "n_maps": len(maps),
        "same": all(np.array_equal(a, b, equal_nan=True) for a, b in zip(maps, reference, strict=True)),
        "bits": bits(maps) == bits(reference),
        "timing": timing,
        "error": error,
        "helpers": helpers,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    """
)


@pytest.mark.slow
def test_ground_table_distributed_and_a_failure_on_one_process(tmp_path, assets):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    torchrun_two([script, tmp_path, *assets])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        # every process holds every map, in row order, as one process computes them
        assert record["processes"] == 2 and record["n_maps"] == 7 and record["same"] and record["bits"]
        assert record["timing"]["pairs"] == 7 and record["timing"]["processes"] == 2
        # gather_json and gather_arrays between the 2 processes: exact, to all or to rank 0 only
        assert record["helpers"] == dict.fromkeys(record["helpers"], True) and len(record["helpers"]) == 6
    # the failing process raises its own error, the other one names it (and neither waits forever)
    assert ranks[1]["error"] == "InputError: bad row on rank 1"
    assert ranks[0]["error"].startswith("InputError: process 1 of the distributed run failed")


@pytest.mark.parametrize(
    ("n_rows", "n_proc", "bs"), [(7, 2, 2), (11, 2, 8), (1000, 4, 8), (3, 4, 1), (0, 2, 8)]
)
def test_shards_cover_the_rows_in_order_at_batch_boundaries(n_rows, n_proc, bs):
    bounds = shard_bounds(n_rows, n_proc, bs)
    assert len(bounds) == n_proc and bounds[0][0] == 0 and bounds[-1][1] == n_rows
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    assert all(start % bs == 0 or start == n_rows for start, _ in bounds)
    batches = [-(-(stop - start) // bs) for start, stop in bounds]
    assert max(batches) - min(batches) <= 1


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread here too, like the launched runs (a tiny model gains nothing from more, and
    loses much when the cores are busy)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A random tiny LDM and a SynthCXR folder (made here: a model saved under torchrun is written by
    the main process only)."""
    from trustmed.data.synth.cxr import make_synthcxr
    from trustmed.grounding.ldm import make_random_monai_ldm

    root = tmp_path_factory.mktemp("dist")
    make_synthcxr(root / "data", n_images=20, seed=1000)
    return make_random_monai_ldm(root / "model"), root / "data"


@pytest.fixture(scope="module")
def eval_setup(assets):
    from trustmed.data.mscxr import load_mscxr
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder

    model, data = assets
    table = load_mscxr(data, split="test").head(N_PAIRS)
    return ZeroShotGrounder(load_ldm(model), GroundingConfig(num_steps=5, batch_size=2)), table


@pytest.mark.parametrize("keep_maps", [True, False], ids=["kept", "recomputed"])
def test_one_process_equals_evaluate_maps(eval_setup, monkeypatch, keep_maps):
    from trustmed.grounding.pipeline import evaluate_maps
    from trustmed.grounding.zero_shot import ground_table

    grounder, table = eval_setup
    maps = ground_table(grounder, table)
    scores, summary = evaluate_maps(table, maps, n_boot=50, seed=3)
    if not keep_maps:  # every case map is then recomputed from its batch
        monkeypatch.setattr(distributed._Keeper, "add", lambda self, *a: None)
    result = evaluate_table_distributed(grounder, table, n_boot=50, seed=3, n_cases=2)
    pd.testing.assert_frame_equal(result.scores, scores)
    assert json.dumps(result.summary, sort_keys=True) == json.dumps(summary, sort_keys=True)
    assert summary["n_laterality_pairs"] == 2
    picks = case_rows(scores, 2)
    assert sorted(result.case_maps) == sorted(set(picks))
    for i in picks:
        np.testing.assert_array_equal(result.case_maps[i], maps[i])
    assert grounder.timing_ == result.timing and result.timing["pairs"] == N_PAIRS


def test_ground_table_distributed_on_one_process_is_ground_table(eval_setup):
    from trustmed.grounding.zero_shot import ground_table

    grounder, table = eval_setup
    texts = [t.replace("left", "right") for t in table["text"]]
    got = ground_table_distributed(grounder, table, texts=texts)
    want = ground_table(grounder, table, texts=texts)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_failure_is_raised_on_every_process():
    ok, bad = {"result": 1}, {"error": "InputError: phrase 'x': too long", "input": True}
    with pytest.raises(InputError, match="process 1 of the distributed run failed: InputError: phrase"):
        distributed._raise_failures([ok, bad], 0, None)
    crash = {"error": "RuntimeError: CUDA out of memory", "input": False}
    with pytest.raises(RuntimeError, match="process 0 of the distributed run failed"):
        distributed._raise_failures([crash, ok], 1, None)
    own = ValueError("mine")
    with pytest.raises(ValueError, match="mine"):
        distributed._raise_failures([ok, crash], 1, own)
    distributed._raise_failures([ok, ok], 0, None)  # nothing failed


# JSON-able data with what must survive: NaN, ±inf, floats to the last bit, numpy scalars, non-ASCII
TRICKY = {
    "nan": float("nan"),
    "inf": [float("inf"), -np.inf],
    "exact": [0.1 + 0.2, 1 / 3, 5e-324, 2.2250738585072014e-308, -0.0, 1e300],
    "numpy": [np.float32(0.1), np.float64(np.pi), np.int64(-7), np.bool_(True), np.float32("nan")],
    "array": np.array([[1.5, np.nan]], dtype=np.float32),
    "tuple": (1, "é→", None, False),
}
TRICKY_PLAIN = {
    "nan": float("nan"),
    "inf": [float("inf"), float("-inf")],
    "exact": [0.1 + 0.2, 1 / 3, 5e-324, 2.2250738585072014e-308, -0.0, 1e300],
    "numpy": [float(np.float32(0.1)), math.pi, -7, True, float("nan")],
    "array": [[1.5, float("nan")]],
    "tuple": [1, "é→", None, False],
}


def _same_json(a, b) -> bool:
    """Equal, NaN equal to NaN, floats bit for bit (-0.0 is not 0.0), types included (1 is not 1.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return a.hex() == b.hex() or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _maps():
    """float32 maps of several shapes, with NaN (one with a payload), ±inf, -0.0 and subnormals."""
    rng = np.random.default_rng(0)
    maps = [rng.standard_normal(shape).astype(np.float32) for shape in [(7, 9), (3, 4, 2), (1,), (0, 5), ()]]
    maps[0][0, :5] = [np.nan, np.inf, -np.inf, -0.0, np.float32(1e-45)]
    maps[1].flat[3] = np.uint32(0xFFC0BEEF).view(np.float32)
    return maps


def _assert_bits(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == np.float32 and a.shape == b.shape
        assert a.view(np.uint32).tobytes() == b.view(np.uint32).tobytes()


def test_gathers_outside_a_launch_return_what_they_were_given():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already set up in this process")
    for to_main_only in (False, True):
        got = distributed.gather_json(TRICKY, to_main_only=to_main_only)
        assert len(got) == 1 and got[0] is TRICKY
        maps = _maps()
        got = distributed.gather_arrays(maps, to_main_only=to_main_only)
        assert len(got) == len(maps) and all(a is b for a, b in zip(got, maps, strict=True))
    assert distributed.gather_arrays([]) == []


def test_json_keeps_nan_exact_floats_and_numpy_scalars():
    data = distributed._json_bytes(TRICKY)
    assert b"NaN" in data and b"Infinity" in data
    assert _same_json(distributed._from_json_bytes(data), TRICKY_PLAIN)
    assert not _same_json(distributed._from_json_bytes(distributed._json_bytes(0.0)), -0.0)  # the check bites
    with pytest.raises(TypeError, match="keys must be strings"):
        distributed._json_bytes({(3, 4): 1.0})
    with pytest.raises(TypeError, match="cannot be sent as JSON"):
        distributed._json_bytes({"x": object()})


@pytest.fixture
def group_of_one():
    """A gloo process group of this process alone (in memory), so the collectives themselves run."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already set up in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_gathers_through_the_collectives_round_trip_exactly(group_of_one):
    import torch

    assert distributed._collective_device() == torch.device("cpu")
    # the public helpers skip the collectives in a group of one ...
    assert distributed.gather_json(TRICKY)[0] is TRICKY
    # ... which send JSON as uint8 tensors and maps as one flat float32 tensor, bit for bit
    for to_main_only in (False, True):
        got = distributed._gather_json(TRICKY, to_main_only=to_main_only)
        assert len(got) == 1 and _same_json(got[0], TRICKY_PLAIN)
        _assert_bits(distributed._gather_arrays(_maps(), to_main_only=to_main_only), _maps())
        assert distributed._gather_arrays([], to_main_only=to_main_only) == []
    # other dtypes travel as float32
    (got,) = distributed._gather_arrays([np.array([0.5, np.nan])], to_main_only=True)
    assert got.dtype == np.float32 and got[0] == 0.5 and np.isnan(got[1])


def test_score_rows_and_laterality_results_round_trip_through_json():
    frames = [
        pd.DataFrame(
            [
                {"pair_id": 0, "category": "Pneumonia", "text": "left base", "cnr": 1 / 3, "miou": np.nan},
                {"pair_id": 1, "category": "Edema", "text": "é", "cnr": 0.1 + 0.2, "miou": 0.25},
            ]
        ),
        pd.DataFrame([{"pair_id": 2, "category": "Edema", "text": "x", "cnr": np.nan, "miou": 1e-300}]),
    ]
    checks = {(3, 4): 1.0, (4, 3): 0.0}
    data = distributed._shard_from_json(
        distributed._from_json_bytes(
            distributed._json_bytes(distributed._shard_to_json(frames, checks, 1.25))
        )
    )
    got_frames, got_checks, seconds = data
    pd.testing.assert_frame_equal(
        pd.concat(got_frames, ignore_index=True), pd.concat(frames, ignore_index=True), check_exact=True
    )
    assert got_checks == checks and seconds == 1.25

"""Every benchmark keeps the one contract: ``--out/--seed/--quick`` from ``benchmarks/_lib/bench.py`` and
TARGET lines printed by its ``target()`` (never by hand)."""

from __future__ import annotations

import ast
import doctest
import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def _calls(tree: ast.AST) -> set[str]:
    return {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_uses_the_shared_contract(script):
    source = script.read_text()
    calls = _calls(ast.parse(source))
    assert "bench_parser" in calls, f"{script.name}: build the parser with _lib.bench.bench_parser"
    assert "TARGET " not in source.replace("TARGET lines", ""), f"{script.name}: print targets with target()"


def test_the_shared_helper_works():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        bench = importlib.import_module("_lib.bench")
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert doctest.testmod(bench).failed == 0
    args = bench.bench_parser("A benchmark.\n\nMore.", "runs/bench/x").parse_args(["--quick", "--seed", "3"])
    assert (args.quick, args.seed, str(args.out)) == (True, 3, "runs/bench/x")
    assert bench.target("x", float("nan"), ">=", 1)["passed"] is False  # an undefined value is a miss


@pytest.mark.slow
def test_pretrained_start_runs_end_to_end_in_a_tiny_configuration(tmp_path):
    """benchmarks/pretrained_start.py at a size that only checks the plumbing (about a minute)."""
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    threads = torch.get_num_threads()
    try:
        bench = importlib.import_module("pretrained_start")
        torch.set_num_threads(1)
        results = bench.run(tmp_path, [0], bench.TINY)
    finally:
        sys.path.remove(str(BENCHMARKS))
        torch.set_num_threads(threads)
    state = torch.load(tmp_path / "pretrain" / "densenet121_source.pth", weights_only=True)
    assert all(k.startswith(("features.", "classifier.")) for k in state)
    assert "features.denseblock1.denselayer1.norm1.weight" in state
    assert tuple(state["classifier.weight"].shape) == (4, 1024)
    mapping = results["pretraining"]["mapping"]
    assert mapping["extractor_tensors_loaded"] == mapping["extractor_tensors"] > 0 and mapping["head_fresh"]
    names = [t["name"] for t in results["targets"]]
    assert names == ["pretrained_init_auc_gain", "pretrained_swift_gap_reduction"]
    seed = results["per_seed"][0]
    assert seed["auc_gain"] == seed["pretrained"]["test"]["auc"] - seed["scratch"]["test"]["auc"]
    assert (tmp_path / "seed0" / "pretrained" / "model.safetensors").is_file()

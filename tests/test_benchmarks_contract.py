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

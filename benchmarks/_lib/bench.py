"""What every benchmark shares: the ``--out/--seed/--quick`` contract and the ``TARGET`` line.

    parser = bench_parser(__doc__, "runs/bench/stein_speed")
    args = parser.parse_args()
    ...
    results["targets"] = [target("stein_speedup", speedup, ">=", 2.0)]
    write_results(args.out, results)

A target line reads ``TARGET <name>: <value> (goal <op> <goal>) PASS|MISS``; a missed target is
printed with its number, like a met one.
"""

from __future__ import annotations

import argparse
import math
import operator
from pathlib import Path
from typing import Any

from trustmed.io import write_json

__all__ = ["bench_parser", "target", "write_results"]

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "=": operator.eq}


def bench_parser(doc: str | None, default_out: str) -> argparse.ArgumentParser:
    """An argument parser with the three options every benchmark takes."""
    parser = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path(default_out), help="folder for results.json")
    parser.add_argument("--seed", type=int, default=0, help="first random seed")
    parser.add_argument("--quick", action="store_true", help="a version that finishes in a few CPU minutes")
    return parser


def target(
    name: str, value: float, op: str, goal: float, *, fmt: str = ".3f", note: str = ""
) -> dict[str, Any]:
    """Print one ``TARGET`` line and return it as a dict (for ``results.json``).

    >>> row = target("speedup", 2.5, ">=", 2.0, fmt=".2f")
    TARGET speedup: 2.50 (goal >= 2) PASS
    >>> row["passed"]
    True
    """
    value = float(value)
    passed = bool(not math.isnan(value) and _OPS[op](value, goal))
    extra = f"; {note}" if note else ""
    print(f"TARGET {name}: {value:{fmt}} (goal {op} {goal:g}{extra}) {'PASS' if passed else 'MISS'}")
    return {"name": name, "value": value, "op": op, "goal": goal, "passed": passed}


def write_results(out: Path, results: dict[str, Any]) -> Path:
    """``out/results.json`` (NaN and infinities become ``null``)."""
    out.mkdir(parents=True, exist_ok=True)
    return write_json(out / "results.json", results)

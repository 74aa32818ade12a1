"""What every benchmark shares: the ``--out/--seed/--quick`` contract and the ``TARGET`` line.

    parser = bench_parser(__doc__, "runs/bench/stein_speed")
    args = parser.parse_args()
    ...
    results["targets"] = [target("stein_speedup", speedup, ">=", 2.0)]
    write_results(args.out, results)

A target line reads ``TARGET <name>: <value> (goal <op> <goal>) PASS|MISS``; a missed target is
printed with its number, like a met one.

A benchmark also writes ``summary.json`` (:func:`write_summary`): its targets, its result tables and
its computed conclusions, small enough to commit as ``benchmarks/results/<benchmark>.json``, from
which ``make results`` builds ``docs/results.md``; beside it, ``summary.md`` holds the same as
markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import math
import operator
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustmed.io import atomic_write_text, write_json

__all__ = [
    "bench_parser",
    "command_line",
    "markdown",
    "result_table",
    "summary_markdown",
    "target",
    "write_results",
    "write_summary",
]

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


def result_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """One table for :func:`write_summary`; cells are strings (already formatted) or numbers.

    >>> result_table("t", ["a", "b"], [["x", 0.5]])["rows"]
    [['x', 0.5]]
    """
    columns = [str(c) for c in columns]
    rows = [list(r) for r in rows]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(
                f"result_table {title!r}: row {row} has {len(row)} cells, expected {len(columns)}"
            )
    return {"title": title, "columns": columns, "rows": rows}


def markdown(columns: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (every benchmark's ``table.md`` writes its tables with this).

    >>> print(markdown(["a", "b"], [["x", 1]]), end="")
    | a | b |
    | --- | --- |
    | x | 1 |
    """
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(
    out: Path,
    *,
    benchmark: str,
    title: str,
    command: str,
    targets: Sequence[dict[str, Any]],
    tables: Sequence[dict[str, Any]] = (),
    conclusions: Sequence[str] = (),
    settings: dict[str, Any] | None = None,
) -> Path:
    """``out/summary.json``: what ``docs/results.md`` shows of this run (copy it to
    ``benchmarks/results/<benchmark>.json`` to publish it; ``make results`` renders it).

    ``command`` is the command line that produced the run; ``conclusions`` are sentences computed
    from the run's numbers (never typed by hand).
    """
    import torch

    summary = {
        "benchmark": benchmark,
        "title": title,
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": f"{_cpu_count()} CPU cores, torch {torch.__version__}, "
        + _threads(torch.get_num_threads()),
        "settings": settings or {},
        "targets": list(targets),
        "tables": list(tables),
        "conclusions": list(conclusions),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return write_json(out / "summary.json", summary)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The run's ``summary.md``: its targets, tables and conclusions as markdown (what
    :func:`write_summary` writes beside ``summary.json``; ``docs/results.md`` is built from the JSON).

    >>> print(summary_markdown({"title": "T", "command": "python b.py", "targets": [], "conclusions": ["c."],
    ...     "tables": [result_table("x", ["a"], [[1]])]}), end="")
    # T
    <BLANKLINE>
    `python b.py`
    <BLANKLINE>
    **x**
    <BLANKLINE>
    | a |
    | --- |
    | 1 |
    <BLANKLINE>
    - c.
    """
    parts = [f"# {summary['title']}\n", f"`{summary['command']}`\n"]
    if summary["targets"]:
        rows = [
            [
                f"`{t['name']}`",
                f"{t['value']:.4g}",
                f"{t['op']} {t['goal']:g}",
                "PASS" if t["passed"] else "MISS",
            ]
            for t in summary["targets"]
        ]
        parts.append(markdown(["target", "value", "goal", "result"], rows))
    for table in summary["tables"]:
        parts.append(f"**{table['title']}**\n")
        parts.append(markdown(table["columns"], table["rows"]))
    if summary["conclusions"]:
        parts.append("".join(f"- {c}\n" for c in summary["conclusions"]))
    return "\n".join(parts)


def command_line() -> str:
    """The command that started this process, as a user would type it."""
    script = Path(sys.argv[0]).resolve()
    shown = f"benchmarks/{script.name}" if script.parent.name == "benchmarks" else str(sys.argv[0])
    return shlex.join(["python", shown, *sys.argv[1:]])


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _threads(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"

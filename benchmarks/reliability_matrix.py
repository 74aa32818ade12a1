"""The reliability matrix: every case of ``tests/reliability`` tried, counted by category and outcome.

Runs the test suite's matrix (planted pickles, damaged checkpoint/resume/model files for every command
that reads them, fuzzed predictions CSVs, bad ``--out`` for every command, corrupt images, bad
options, crash and resume) and tallies each case's outcome: "exit 0, complete --out", "exit 2, one
line, no --out", or FAILED (a traceback, another exit code, a message that does not name the file,
or output left behind). ``docs/reliability.md`` shows the table this prints. Writes ``results.json`` and
``summary.json`` (what ``make results`` renders).

    python benchmarks/reliability_matrix.py --out runs/bench/reliability [--quick] [--seed 0]

``--quick`` fuzzes 60 CSVs (as CI does), the full run 1 000; ``--seed`` picks the fuzzed CSVs (the
test suite, without it, draws the same 60 every time).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _lib.bench import bench_parser, command_line, result_table, target, write_results, write_summary

ROOT = Path(__file__).resolve().parents[1]


def run_matrix(examples: int, seed: int) -> tuple[list[dict], int]:
    """Run ``tests/reliability``; return every recorded case and pytest's exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "outcomes.json"
        env = dict(
            os.environ,
            TRUSTMED_RELIABILITY_REPORT=str(report),
            TRUSTMED_FUZZ_EXAMPLES=str(examples),
            TRUSTMED_FUZZ_SEED=str(seed),
        )
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reliability"]
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])
        outcomes = json.loads(report.read_text()) if report.is_file() else []
    return outcomes, proc.returncode


def main() -> None:
    args = bench_parser(__doc__, "runs/bench/reliability").parse_args()
    examples = 60 if args.quick else 1000
    outcomes, code = run_matrix(examples, args.seed)
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for case in outcomes:
        table[case["category"].split(":")[0]][case["outcome"]] += 1
    columns = ["exit 0, complete --out", "exit 2, one line, --out untouched", "FAILED"]
    print("\n| category | cases | " + " | ".join(columns) + " |")
    print("| --- | --- |" + " --- |" * len(columns))
    for category in sorted(table):
        counts = table[category]
        cells = " | ".join(str(counts[c]) for c in columns)
        print(f"| {category} | {sum(counts.values())} | {cells} |")
    total = len(outcomes)
    clean = sum(1 for case in outcomes if case["outcome"] != "FAILED")
    print(
        f"| all | {total} | " + " | ".join(str(sum(t[c] for t in table.values())) for c in columns) + " |\n"
    )
    share = clean / total if total and code == 0 else float("nan")
    results = {"examples_fuzzed": examples, "seed": args.seed, "pytest_exit_code": code, "cases": outcomes}
    results["targets"] = [target("reliability_cases_clean", share, "=", 1, note=f"{total} cases")]
    write_results(args.out, results)
    rows = [[c, sum(table[c].values()), *(table[c][k] for k in columns)] for c in sorted(table)]
    rows.append(["all", total, *(sum(t[k] for t in table.values()) for k in columns)])
    failed = total - clean
    write_summary(
        args.out,
        benchmark="reliability_matrix",
        title="Reliability matrix: bad input, damaged files, crashes",
        command=command_line(),
        targets=results["targets"],
        tables=[result_table("Cases by category and outcome", ["category", "cases", *columns], rows)],
        conclusions=[
            f"{total} cases in {len(table)} categories, {examples} of them fuzzed predictions CSVs "
            f"(seed {args.seed}); {failed} FAILED; pytest exit code {code}.",
        ],
        settings={"examples_fuzzed": examples, "seed": args.seed},
    )


if __name__ == "__main__":
    main()

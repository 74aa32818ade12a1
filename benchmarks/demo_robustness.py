"""Benchmark: do the demo's conclusions hold across seeds and torch thread counts?

``trustmed demo`` opens its debiasing and distillation sections with conclusions computed from the
run: does SWiFT cut the ERM model's equalised-odds gap on the test split (threshold 0.5, result not
flagged), and does GroupDistil's test worst-group accuracy exceed group-uniform KD's (``kd``, the
baseline GroupDistil is compared with; per-sample KD is reported beside it). A demo whose sentences
flip with the seed or the number of CPU threads tells nothing, so this benchmark runs the demo as a
user would, each run in a fresh process::

    OMP_NUM_THREADS=<t> MKL_NUM_THREADS=<t> python -m trustmed.cli demo --out <dir> --quiet \\
        --seed <s> --set sections=[debias,distill]

for seeds ``--seed`` .. ``--seed + 4`` with 1 and with 2 threads (``--quick``: 2 seeds, 2 threads
only), and reads each run's ``results.json``. The demo records ``torch.get_num_threads()`` there;
the benchmark checks it equals the requested count. Nothing is chosen here: every hyper-parameter
of the demo is its own (chosen on validation), and the test numbers are only read.

Per (seed, threads): ERM test AUC, ERM and SWiFT test gaps, whether SWiFT cuts the gap, KD
(group-uniform and per-sample) and GroupDistil test worst-group accuracies, whether GroupDistil beats
KD, and each section's verdict as worded in the report (e.g. "higher, CIs overlap": the run does not
show that GroupDistil helps). Per seed: whether the 1- and 2-thread runs reach the same two yes/no
conclusions, the same verdict wording and the same claims (SWiFT cut the gap; GroupDistil shown to
help, CIs apart), and the largest absolute difference between their numbers. Over seeds (per thread
count): the paired differences SWiFT - ERM (gap) and GroupDistil - KD (worst-group accuracy),
``_lib/paired.py``.

Targets:

* ``demo_swift_cuts_gap_fraction``: fraction of runs where SWiFT cuts ERM's gap (>= 1);
* ``demo_groupdistil_beats_kd_fraction``: fraction of runs where GroupDistil's test worst-group
  accuracy is above group-uniform KD's (>= 1);
* ``demo_erm_test_auc_min``: the lowest ERM test AUC over runs (>= 0.80);
* ``demo_thread_agreement``: fraction of seeds whose conclusions agree between 1 and 2 threads
  (>= 1; not measured by ``--quick``, which runs one thread count).

Writes ``results.json`` (every run's numbers and conclusions), ``table.md`` and ``summary.json``;
each run's demo folder and log stay under ``--out`` (``--reuse`` reads the runs already there instead
of running them again, e.g. to rebuild the tables). ``--jobs 2`` runs two demos at a time: the
thread count of each is still its own, only the wall times grow.

Usage::

    python benchmarks/demo_robustness.py --out runs/bench/demo_robustness [--jobs 2]
    python benchmarks/demo_robustness.py --out runs/bench/demo_robustness_quick --quick
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _lib.bench import (
    bench_parser,
    command_line,
    markdown,
    result_table,
    target,
    write_results,
    write_summary,
)
from _lib.paired import paired, paired_markdown

from trustmed.io import read_json

log = logging.getLogger("demo_robustness")

SECTIONS = "[debias,distill]"
FULL = {"n_seeds": 5, "threads": (1, 2)}
QUICK = {"n_seeds": 2, "threads": (2,)}
KD, KD_SAMPLE = "student KD group-uniform", "student KD per-sample"
# the numbers compared between thread counts (key, label)
NUMBERS = [
    ("erm_test_auc", "ERM test AUC"),
    ("erm_gap", "ERM gap"),
    ("swift_gap", "SWiFT gap"),
    ("kd_wg", "KD wg acc"),
    ("gd_wg", "GroupDistil wg acc"),
]
CONCLUSIONS = ("swift_cuts_gap", "gd_beats_kd")
TIE = 0.005


def run_demo(out: Path, seed: int, threads: int, reuse: bool) -> dict[str, Any]:
    """One demo run in a fresh process with ``threads`` CPU threads; its numbers from ``results.json``."""
    folder = out / f"seed{seed}_threads{threads}"
    results = folder / "demo" / "results.json"
    wall = float("nan")
    if not (reuse and results.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads),
        }
        cmd = [sys.executable, "-m", "trustmed.cli", "demo", "--out", str(folder / "demo"), "--quiet"]
        cmd += ["--seed", str(seed), "--set", f"sections={SECTIONS}"]
        log.info("seed %d, %d thread(s): %s", seed, threads, " ".join(cmd))
        start = time.perf_counter()
        with open(folder / "demo.log", "w") as logfile:
            proc = subprocess.run(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"demo failed (seed {seed}, {threads} threads): see {folder / 'demo.log'}")
    row = read_row(read_json(results))
    row.update({"seed": seed, "threads": threads, "reused": not np.isfinite(wall), "process_s": wall})
    log.info("seed %d, %d thread(s): %s", seed, threads, {k: row[k] for k in (*CONCLUSIONS, "demo_s")})
    return row


def read_row(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers and conclusions of one demo ``results.json``."""
    debias, distill = results["sections"]["debias"], results["sections"]["distill"]
    at_half = debias["threshold_0.5"]
    models = distill["models"]
    gd = models[distill["groupdistil"]]
    return {
        "torch_threads": results["torch_threads"],
        "erm_val_auc": results["erm"]["val_auc"],
        "erm_test_auc": results["erm"]["test_auc"],
        "erm_gap": at_half["erm"]["gap"],
        "swift_gap": at_half["swift"]["gap"],
        "swift_auc": at_half["swift"]["auc"],
        "swift_flag": at_half["swift"]["flag"],
        "swift_cuts_gap": bool(debias["swift_cuts_gap"]),
        "swift_verdict": debias["swift_verdict"],
        "kd_wg": models[KD]["test_acc_wg"],
        "kd_sample_wg": models[KD_SAMPLE]["test_acc_wg"],
        "gd_wg": gd["test_acc_wg"],
        "gd_beats_kd": bool(distill["groupdistil_beats_kd"]),
        "gd_beats_kd_sample": bool(distill["groupdistil_beats_kd_sample"]),
        "gd_verdict": distill["groupdistil_verdict"],
        "debias_conclusion": debias["conclusion"],
        "distill_conclusion": distill["conclusion"],
        "demo_s": results["timings"].get("total", float("nan")),
    }


def thread_agreement(rows: list[dict[str, Any]], threads: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per seed: whether every thread count reached the same yes/no conclusions, the same verdict wording
    (e.g. "CIs overlap") and the same claims (SWiFT cut the gap; GroupDistil *shown* to help, CIs
    apart), and how far the numbers moved."""
    out = []
    for seed in sorted({r["seed"] for r in rows}):
        runs = [r for r in rows if r["seed"] == seed and r["threads"] in threads]
        same = {c: len({r[c] for r in runs}) == 1 for c in CONCLUSIONS}
        verdicts = all(len({r[v] for r in runs}) == 1 for v in ("swift_verdict", "gd_verdict"))
        claims = len({(r["swift_cuts_gap"], r["gd_verdict"] == "helped") for r in runs}) == 1
        diffs = {k: float(max(r[k] for r in runs) - min(r[k] for r in runs)) for k, _ in NUMBERS}
        out.append(
            {
                "seed": seed,
                "agree": all(same.values()),
                **{f"{c}_agrees": v for c, v in same.items()},
                "verdicts_agree": verdicts,
                "claims_agree": claims,
                "max_abs_diff": diffs,
            }
        )
    return out


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def main() -> None:
    parser = bench_parser(__doc__, "runs/bench/demo_robustness")
    parser.add_argument("--jobs", type=int, default=1, help="demo runs at a time (separate processes)")
    parser.add_argument("--reuse", action="store_true", help="read runs whose results.json already exists")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    plan = QUICK if args.quick else FULL
    seeds = list(range(args.seed, args.seed + plan["n_seeds"]))
    threads = tuple(plan["threads"])
    jobs = [(s, t) for s in seeds for t in threads]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda job: run_demo(args.out, *job, args.reuse), jobs))
    total = time.perf_counter() - start
    rows.sort(key=lambda r: (r["seed"], r["threads"]))

    threads_ok = all(r["torch_threads"] == r["threads"] for r in rows)
    agreement = thread_agreement(rows, threads) if len(threads) > 1 else []
    paired_rows = []
    for t in threads:
        sub = [r for r in rows if r["threads"] == t]
        ss = [r["seed"] for r in sub]
        paired_rows.append(
            {
                "comparison": f"SWiFT vs ERM ({t} thread{'s' if t > 1 else ''})",
                "metric": "test eodds gap @0.5",
                **paired(
                    [r["swift_gap"] for r in sub],
                    [r["erm_gap"] for r in sub],
                    better="lower",
                    tie=TIE,
                    seeds=ss,
                ),
            }
        )
        paired_rows.append(
            {
                "comparison": f"GroupDistil vs group-uniform KD ({t} thread{'s' if t > 1 else ''})",
                "metric": "test worst-group acc",
                **paired(
                    [r["gd_wg"] for r in sub], [r["kd_wg"] for r in sub], better="higher", tie=TIE, seeds=ss
                ),
            }
        )

    n = len(rows)
    cut = float(np.mean([r["swift_cuts_gap"] for r in rows]))
    beats = float(np.mean([r["gd_beats_kd"] for r in rows]))
    auc_min = float(min(r["erm_test_auc"] for r in rows))
    targets = [
        target("demo_swift_cuts_gap_fraction", cut, ">=", 1.0, note=f"{n} runs"),
        target("demo_groupdistil_beats_kd_fraction", beats, ">=", 1.0, note=f"{n} runs; group-uniform KD"),
        target("demo_erm_test_auc_min", auc_min, ">=", 0.80, note=f"{n} runs"),
    ]
    if agreement:
        agree = float(np.mean([a["agree"] for a in agreement]))
        targets.append(
            target(
                "demo_thread_agreement", agree, ">=", 1.0, note=f"{len(agreement)} seeds, threads {threads}"
            )
        )

    columns = [
        "seed",
        "threads",
        "torch threads",
        "ERM test AUC",
        "ERM gap",
        "SWiFT gap",
        "SWiFT cuts gap",
        "KD wg acc",
        "per-sample KD wg acc",
        "GroupDistil wg acc",
        "GroupDistil beats KD",
        "SWiFT verdict",
        "GroupDistil verdict",
        "demo s",
    ]
    table_rows = [
        [
            r["seed"],
            r["threads"],
            r["torch_threads"],
            round(r["erm_test_auc"], 3),
            round(r["erm_gap"], 3),
            round(r["swift_gap"], 3) if not r["swift_flag"] else f"{r['swift_gap']:.3f} (flagged)",
            _yes(r["swift_cuts_gap"]),
            round(r["kd_wg"], 3),
            round(r["kd_sample_wg"], 3),
            round(r["gd_wg"], 3),
            _yes(r["gd_beats_kd"]),
            r["swift_verdict"],
            r["gd_verdict"],
            round(r["demo_s"], 0),
        ]
        for r in rows
    ]
    tables = [result_table("Demo conclusions per seed and thread count (test split)", columns, table_rows)]
    if agreement:
        agree_columns = [
            "seed",
            "conclusions agree",
            "verdict wording agrees",
            "claims agree",
            *(f"abs. diff. {label}" for _, label in NUMBERS),
        ]
        agree_rows = [
            [
                a["seed"],
                _yes(a["agree"]),
                _yes(a["verdicts_agree"]),
                _yes(a["claims_agree"]),
                *(round(a["max_abs_diff"][k], 4) for k, _ in NUMBERS),
            ]
            for a in agreement
        ]
        tables.append(
            result_table(f"1 vs 2 threads: agreement per seed (threads {threads})", agree_columns, agree_rows)
        )
    tables.append(
        result_table(
            "Paired over seeds (mean difference, 95 % t-interval, win/tie/loss)",
            ["comparison", "metric", "mean", "95% CI", "W/T/L", "worst seed (diff)"],
            [
                [
                    p["comparison"],
                    p["metric"],
                    round(p["mean"], 3),
                    f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]" if np.isfinite(p["ci_low"]) else "n/a",
                    f"{p['wins']}/{p['ties']}/{p['losses']}",
                    f"{p['worst_seed']} ({p['worst']:+.3f})",
                ]
                for p in paired_rows
            ],
        )
    )

    def runs_where(key: str) -> str:
        """Which runs hold ``key`` (seed/threads), naming the smaller side."""
        yes = [f"s{r['seed']}/{r['threads']}t" for r in rows if r[key]]
        no = [f"s{r['seed']}/{r['threads']}t" for r in rows if not r[key]]
        if not no:
            return "every run"
        if not yes:
            return "no run"
        return f"all runs but {', '.join(no)}" if len(no) <= len(yes) else f"only {', '.join(yes)}"

    verdicts = {
        v: sum(r["gd_verdict"] == v for r in rows) for v in ("not helped", "higher, CIs overlap", "helped")
    }

    conclusions = [
        f"SWiFT cut ERM's test equalised-odds gap (threshold 0.5, result not flagged) in "
        f"{sum(r['swift_cuts_gap'] for r in rows)} of {n} demo runs ({runs_where('swift_cuts_gap')}); "
        "mean gap "
        f"{np.mean([r['erm_gap'] for r in rows]):.3f} (ERM) → {np.mean([r['swift_gap'] for r in rows]):.3f} "
        "(SWiFT).",
        f"GroupDistil's test worst-group accuracy was above group-uniform KD's in "
        f"{sum(r['gd_beats_kd'] for r in rows)} of {n} runs ({runs_where('gd_beats_kd')}; mean "
        f"{np.mean([r['gd_wg'] for r in rows]):.3f} vs {np.mean([r['kd_wg'] for r in rows]):.3f}) and above "
        f"per-sample KD's in {sum(r['gd_beats_kd_sample'] for r in rows)} of {n} "
        f"(mean {np.mean([r['kd_sample_wg'] for r in rows]):.3f}).",
        "The demo's GroupDistil verdict (against group-uniform KD): did not help in "
        f"{verdicts['not helped']}, "
        f"scored higher with overlapping 95 % CIs (not shown to help) in {verdicts['higher, CIs overlap']}, "
        f"helped in {verdicts['helped']} of {n} runs.",
        f"ERM's test AUC ranged from {auc_min:.3f} to {max(r['erm_test_auc'] for r in rows):.3f} "
        f"(validation AUC {min(r['erm_val_auc'] for r in rows):.3f}–"
        f"{max(r['erm_val_auc'] for r in rows):.3f}).",
        (
            "torch used the requested number of threads in every run."
            if threads_ok
            else "torch did NOT use the requested number of threads in some runs (see the table)."
        ),
    ]
    if agreement:
        worst = {k: max(a["max_abs_diff"][k] for a in agreement) for k, _ in NUMBERS}
        conclusions.append(
            f"1 vs 2 threads: the conclusions agreed on {sum(a['agree'] for a in agreement)} of "
            f"{len(agreement)} seeds (the verdict wording, e.g. 'CIs overlap', on "
            f"{sum(a['verdicts_agree'] for a in agreement)}; on what the sentences claim, SWiFT cut the gap "
            f"and GroupDistil shown to help with CIs apart, on {sum(a['claims_agree'] for a in agreement)}); "
            "the numbers differed by at most "
            + ", ".join(f"{worst[k]:.4f} ({label})" for k, label in NUMBERS)
            + "."
        )
    else:
        conclusions.append("One thread count only (--quick): agreement across thread counts not measured.")
    for line in conclusions:
        print(line)

    settings = {
        "seeds": seeds,
        "threads": list(threads),
        "sections": SECTIONS,
        "jobs": args.jobs,
        "reused_runs": sum(r["reused"] for r in rows),
        "total_wall_s": total if not any(r["reused"] for r in rows) else None,
    }
    write_results(
        args.out,
        {
            "settings": settings,
            "runs": rows,
            "agreement": agreement,
            "paired": paired_rows,
            "targets": targets,
        },
    )
    md = ["# Demo robustness", ""]
    for t in tables[:-1]:  # the paired table is rendered by paired_markdown below
        md += [f"**{t['title']}**", "", markdown(t["columns"], t["rows"])]
    md += [f"**{tables[-1]['title']}**", "", paired_markdown(paired_rows), ""]
    md += [f"* {c}" for c in conclusions]
    (args.out / "table.md").write_text("\n".join(md) + "\n")
    write_summary(
        args.out,
        benchmark="demo_robustness",
        title="The demo's conclusions across seeds and thread counts",
        command=command_line(),
        targets=targets,
        tables=tables,
        conclusions=conclusions,
        settings=settings,
    )
    reused = sum(r["reused"] for r in rows)
    print(f"{n} demo runs ({reused} read back) in {total:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()

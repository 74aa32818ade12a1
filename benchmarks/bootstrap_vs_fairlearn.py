"""Bootstrap CIs of group metrics: trustmed's vectorised bootstrap against fairlearn's MetricFrame.

Both compute selection rate, TPR, FPR, accuracy and AUC per group with percentile-bootstrap
intervals on the same predictions (default: 100 000 predictions, 4 groups, 1 000 replicates).
fairlearn's ``MetricFrame(..., n_boot=k, ci_quantiles=...)`` recomputes a full MetricFrame per
replicate, so it is timed on a few replicates and scaled linearly to ``--n-boot`` (the script says
so). trustmed is timed twice: the library call, and the whole ``trustmed audit`` process on a CSV
(Python start-up, CSV reading, every metric of METRICS.md with CIs, figures and files included).
Wall and CPU times are both measured; the target uses the smaller of the two speed-ups, since wall
time on a shared machine depends on its load. The point estimates of the two must agree to 1e-9.

Writes ``results.json`` (everything) and ``summary.json`` (what ``make results`` renders).

Usage::

    python benchmarks/bootstrap_vs_fairlearn.py --out runs/bench/bootstrap_vs_fairlearn [--seed 0] [--quick]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _lib.bench import bench_parser, command_line, result_table, target, write_results, write_summary

GOAL = 100.0


def make_predictions(n: int, n_groups: int, seed: int) -> pd.DataFrame:
    """Scores of a classifier that is less accurate for some groups, with unequal group sizes."""
    rng = np.random.default_rng(seed)
    sizes = np.linspace(2.0, 1.0, n_groups)
    group = rng.choice(n_groups, size=n, p=sizes / sizes.sum())
    label = (rng.random(n) < 0.3 + 0.05 * group).astype(int)
    signal = 1.2 - 0.25 * group
    logit = signal * (2 * label - 1) + rng.normal(0, 1, n)
    score = 1 / (1 + np.exp(-logit))
    return pd.DataFrame({"label": label, "score": score, "group": [f"g{g}" for g in group]})


def fairlearn_frame(df: pd.DataFrame, n_boot: int | None, seed: int):
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score, roc_auc_score

    def thresholded(metric):
        return lambda y_true, y_score: metric(y_true, (y_score >= 0.5).astype(int))

    metrics = {
        "selection_rate": thresholded(selection_rate),
        "tpr": thresholded(true_positive_rate),
        "fpr": thresholded(false_positive_rate),
        "accuracy": thresholded(accuracy_score),
        "auc": roc_auc_score,
    }
    kwargs = {"n_boot": n_boot, "ci_quantiles": [0.025, 0.975], "random_state": seed} if n_boot else {}
    return MetricFrame(
        metrics=metrics,
        y_true=df["label"].to_numpy(),
        y_pred=df["score"].to_numpy(),
        sensitive_features=df["group"].to_numpy(),
        **kwargs,
    )


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def time_fairlearn(df: pd.DataFrame, reps: int, n_boot: int, seed: int) -> dict:
    """Time MetricFrame with ``reps`` replicates; it computes reps + 1 full frames (the data and each
    resample), so the time per frame is scaled linearly to n_boot + 1 frames."""
    fairlearn_frame(df.iloc[:500], None, seed)  # imports and first-call overhead, not timed
    start = time.perf_counter()
    point = fairlearn_frame(df, None, seed)
    t_point = time.perf_counter() - start
    wall, cpu = _clock()
    fairlearn_frame(df, reps, seed)
    t_reps, c_reps = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "point": point.by_group,
        "timed_replicates": reps,
        "time_point_s": t_point,
        "time_timed_replicates_s": t_reps,
        "cpu_timed_replicates_s": c_reps,
        "per_frame_s": t_reps / (reps + 1),
        "estimated_time_s": t_reps / (reps + 1) * (n_boot + 1),
        "estimated_cpu_s": c_reps / (reps + 1) * (n_boot + 1),
    }


def time_trustmed_library(df: pd.DataFrame, n_boot: int, seed: int) -> tuple[dict, float, float]:
    from trustmed.metrics.fairness import fairness_report

    wall, cpu = _clock()
    report = fairness_report(df["label"], df["score"], groups=df["group"], n_boot=n_boot, seed=seed)
    return report, time.perf_counter() - wall, time.process_time() - cpu


def time_trustmed_cli(df: pd.DataFrame, n_boot: int, seed: int, workdir: Path) -> tuple[dict, float, float]:
    csv = workdir / "predictions.csv"
    df.to_csv(csv, index=False)
    out = workdir / "audit"
    cmd = [
        sys.executable, "-m", "trustmed.cli", "audit", "--predictions", str(csv), "--group-col", "group",
        "--n-boot", str(n_boot), "--seed", str(seed), "--out", str(out), "--quiet",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"trustmed audit failed ({proc.returncode}): {proc.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads((out / "metrics.json").read_text()), elapsed, cpu


def max_point_difference(fairlearn_by_group: pd.DataFrame, report: dict) -> float:
    worst = 0.0
    for name, row in fairlearn_by_group.iterrows():
        for key, value in row.items():
            worst = max(worst, abs(report["groups"][str(name)][key]["value"] - float(value)))
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__, "runs/bench/bootstrap_vs_fairlearn")
    parser.add_argument("--n", type=int, default=None, help="Number of predictions (default 100 000).")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--n-boot", type=int, default=None, help="Replicates (default 1 000).")
    parser.add_argument(
        "--fairlearn-replicates", type=int, default=None, help="Replicates fairlearn is timed on."
    )
    args = parser.parse_args(argv)
    n = args.n or 100_000
    n_boot = args.n_boot or 1000
    reps = args.fairlearn_replicates or (2 if args.quick else 10)  # --quick: fairlearn timed on 2

    load = os.getloadavg()[0]
    df = make_predictions(n, args.groups, args.seed)
    print(f"{n} predictions, {args.groups} groups, {n_boot} bootstrap replicates, {os.cpu_count()} CPU cores")
    fl = time_fairlearn(df, reps, n_boot, args.seed)
    print(
        f"fairlearn MetricFrame: {reps} replicates timed: {fl['time_timed_replicates_s']:.2f} s wall "
        f"({reps + 1} frames, {fl['per_frame_s']:.3f} s each); scaled linearly to {n_boot} replicates: "
        f"{fl['estimated_time_s']:.0f} s wall, {fl['estimated_cpu_s']:.0f} s CPU (estimate, not run)"
    )
    lib_report, t_lib, c_lib = time_trustmed_library(df, n_boot, args.seed)
    print(
        f"trustmed fairness_report (every METRICS.md metric and gap, {n_boot} replicates): {t_lib:.2f} s wall"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cli_report, t_cli, c_cli = time_trustmed_cli(df, n_boot, args.seed, Path(tmp))
    print(
        f"trustmed audit, whole process (start-up, CSV, metrics, figures, files): {t_cli:.2f} s wall, "
        f"{c_cli:.2f} s CPU"
    )

    diff = max(max_point_difference(fl["point"], lib_report), max_point_difference(fl["point"], cli_report))
    agree = diff < 1e-9
    print(f"point estimates: max |trustmed - fairlearn| = {diff:.2e} ({'agree' if agree else 'DISAGREE'})")
    speedup_process = fl["estimated_time_s"] / t_cli
    speedup_library = fl["estimated_time_s"] / t_lib
    speedup_cpu = fl["estimated_cpu_s"] / c_cli
    print(
        f"speed-up (wall): {speedup_process:.0f}x whole audit process, {speedup_library:.0f}x library call; "
        f"(CPU time): {speedup_cpu:.0f}x whole audit process"
    )

    # On a shared machine wall time depends on the load; the target uses the smaller of the
    # wall-time and CPU-time ratios.
    speedup = min(speedup_process, speedup_cpu)
    results = {
        "n": n,
        "groups": args.groups,
        "n_boot": n_boot,
        "seed": args.seed,
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "fairlearn": {k: v for k, v in fl.items() if k != "point"} | {"scaled_linearly": True},
        "trustmed_library_s": t_lib,
        "trustmed_library_cpu_s": c_lib,
        "trustmed_audit_process_s": t_cli,
        "trustmed_audit_process_cpu_s": c_cli,
        "speedup_process_cpu": speedup_cpu,
        "max_point_difference": diff,
        "point_estimates_agree": agree,
        "speedup_process": speedup_process,
        "speedup_library": speedup_library,
        "targets": [
            target("audit_speedup_vs_fairlearn", speedup, ">=", GOAL, fmt=".0f"),
            target("audit_point_difference_vs_fairlearn", diff, "<", 1e-9, fmt=".1e"),
        ],
    }
    write_results(args.out, results)
    write_summary(
        args.out,
        benchmark="bootstrap_vs_fairlearn",
        title="Fairness audit: bootstrap CIs against fairlearn",
        command=command_line()
        if argv is None
        else " ".join(["python benchmarks/bootstrap_vs_fairlearn.py", *argv]),
        targets=results["targets"],
        tables=[timing_table(fl, reps, n_boot, t_lib, c_lib, t_cli, c_cli)],
        conclusions=[
            f"The whole `trustmed audit` process was {speedup_process:.0f}x faster than fairlearn's "
            f"bootstrap in wall time and {speedup_cpu:.0f}x in CPU time; the target uses the smaller.",
            f"fairlearn was timed on {reps} replicates and scaled linearly to {n_boot}: its time is an "
            "estimate, trustmed's is measured.",
            f"Point estimates agree to {diff:.1e} (largest absolute difference over groups and metrics).",
        ],
        settings={
            "predictions": n,
            "groups": args.groups,
            "n_boot": n_boot,
            "fairlearn_timed_replicates": reps,
            "seed": args.seed,
            "quick": args.quick,
            "load_average_at_start": load,
        },
    )
    return results


def timing_table(
    fl: dict, reps: int, n_boot: int, t_lib: float, c_lib: float, t_cli: float, c_cli: float
) -> dict:
    """Wall and CPU seconds of each contender for ``n_boot`` replicates."""
    return result_table(
        f"Time for {n_boot} bootstrap replicates",
        ["what", "wall s", "CPU s", "how"],
        [
            [
                "fairlearn MetricFrame",
                fl["estimated_time_s"],
                fl["estimated_cpu_s"],
                f"{reps} replicates timed, scaled linearly",
            ],
            ["trustmed fairness_report (library call)", t_lib, c_lib, "measured"],
            ["trustmed audit (whole process: start-up, CSV, metrics, figures)", t_cli, c_cli, "measured"],
        ],
    )


if __name__ == "__main__":
    main()

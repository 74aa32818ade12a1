"""The distillation section of ``trustmed demo``: GroupDistil against ERM and KD on ColoredDigits.

A larger ``tiny_cnn`` teacher is trained with ERM on ColoredDigits (real handwritten digits whose
background colour agrees with the label for 95 % of the training images); students with about 8x
fewer parameters are then trained with ERM, vanilla KD (Hinton et al., arXiv 1503.02531) and
GroupDistil (Vilouras et al., MLMI 2023, arXiv 2311.00476), each through
:func:`trustmed.distill.run.train_and_score` (model selected on validation worst-group accuracy,
scored on the balanced test split).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustmed.config import apply_values
from trustmed.distill.run import DistillConfig, DistillResult, prepare_data, train_and_score
from trustmed.distill.trainer import plot_group_weights
from trustmed.report import Section, figure_to_html, table_to_html

__all__ = ["TEACHER_WIDTH", "demo_section", "results_table"]

TEACHER_WIDTH = 24
"""Width of the ``tiny_cnn`` teacher (the students keep ``DistillConfig``'s ``student.width``)."""


def results_table(runs: dict[str, DistillResult]) -> pd.DataFrame:
    """One row per named run: test average / worst-group accuracy with CIs, selection, parameters."""
    rows = []
    for name, run in runs.items():
        test = run.metrics["test"]
        avg, wg = test["acc_avg"], test["acc_wg"]
        rows.append(
            {
                "model": name,
                "params": run.metrics["student_parameters"],
                "test acc_avg": avg["value"],
                "acc_avg 95% CI": _ci(avg),
                "test acc_wg": wg["value"],
                "acc_wg 95% CI": _ci(wg),
                "worst group": test["worst_group"],
                "val acc_wg": run.metrics["val_acc_wg_selected"],
                "epoch": run.metrics["best_epoch"],
            }
        )
    return pd.DataFrame(rows)


def _ci(entry: dict[str, Any]) -> str:
    lo, hi = entry.get("ci", [np.nan, np.nan])
    return f"[{lo:.3f}, {hi:.3f}]"


def demo_section(out_dir: Path, *, seed: int = 0, quick: bool = True) -> Section:
    """Run the ColoredDigits distillation demo (about a minute on one CPU) and return its report section."""
    out_dir = Path(out_dir)
    epochs_teacher, epochs_student = (8, 10) if quick else (15, 15)
    base = DistillConfig(seed=seed)
    data = prepare_data(base, out_dir)

    def run(name: str, method: str, teacher=None, **values) -> DistillResult:
        cfg = apply_values(base, {"method": method, "train.epochs": epochs_student, **values})
        return train_and_score(cfg, data, teacher=teacher, description=name)

    teacher = run("teacher (ERM)", "erm", **{"student.width": TEACHER_WIDTH, "train.epochs": epochs_teacher})
    runs = {
        "teacher (ERM)": teacher,
        "student ERM": run("student ERM", "erm"),
        "student KD": run("student KD", "kd", teacher.model),
        "student GroupDistil": run("student GroupDistil", "groupdistil", teacher.model, **{"loss.eta": 1e-3}),
    }
    table = results_table(runs)
    table.to_csv(out_dir / "distill_results.csv", index=False)
    png = plot_group_weights(
        runs["student GroupDistil"].distiller.group_weights_,
        data.group_names,
        out_dir / "group_weights.png",
        title="GroupDistil group weights q",
    )
    train_counts = ", ".join(f"{n}: {c}" for n, c in zip(data.group_names, data.group_counts, strict=True))
    ratio = teacher.metrics["student_parameters"] // max(runs["student ERM"].metrics["student_parameters"], 1)
    explanation = (
        "<p>A large network (the teacher) is compressed into a small one (the student, "
        f"{ratio}x fewer parameters). The training digits are "
        "coloured so that the background colour gives the answer away 95 % of the time; the test "
        "digits are not. "
        "A model that learned the colour fails on the rare colour/label combinations, which shows as a low "
        "<b>worst-group accuracy</b> (acc_wg). Plain distillation (KD) copies the teacher on the "
        "common groups; GroupDistil weighs each group's distillation loss so the rare groups count as much "
        "as the common ones, and keeps the epoch with the best validation worst-group accuracy. "
        f"Training group sizes: {html.escape(train_counts)}.</p>"
    )
    body = explanation + table_to_html(table) + figure_to_html(png, "GroupDistil group weights per epoch")
    return Section("Group-robust distillation (GroupDistil)", body)

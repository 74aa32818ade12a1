"""GroupDistil on ColoredDigits: the demo section and the experiment pieces the benchmark reuses.

A larger ``tiny_cnn`` teacher is trained with ERM on ColoredDigits (real handwritten digits whose
background colour agrees with the label for 95 % of the training images); students with about 8x
fewer parameters are then trained with ERM, vanilla KD (Hinton et al., arXiv 1503.02531), Group DRO
(Sagawa et al., arXiv 1911.08731) and GroupDistil (Vilouras et al., MLMI 2023, arXiv 2311.00476),
each model selected on validation worst-group accuracy and scored on the balanced test split.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustmed.data.synth.digits import make_colored_digits
from trustmed.data.waterbirds import load_waterbirds
from trustmed.distill.trainer import GroupDistiller, make_group_loaders, plot_group_weights
from trustmed.metrics.robustness import robustness_metrics
from trustmed.models import ModelSpec, build_model, count_parameters
from trustmed.report import Section, figure_to_html, table_to_html
from trustmed.utils import seed_everything

__all__ = ["DigitsExperiment", "MethodRun", "demo_section", "prepare_digits", "train_method"]

log = logging.getLogger(__name__)

TEACHER_WIDTH, STUDENT_WIDTH, IMAGE_SIZE = 24, 8, 16


@dataclass
class DigitsExperiment:
    """ColoredDigits written to ``root``, its manifest, loaders per split and the group bookkeeping."""

    root: Path
    manifest: pd.DataFrame
    loaders: dict[str, Any]
    group_names: list[str]
    group_counts: np.ndarray
    image_size: int = IMAGE_SIZE


@dataclass
class MethodRun:
    """One trained model: its test metrics (with CIs), validation score, selected epoch, cost."""

    name: str
    distiller: GroupDistiller
    test: dict[str, Any]
    val_acc_wg: float
    best_epoch: int | None
    wall_time_s: float
    n_params: int
    extra: dict[str, Any] = field(default_factory=dict)


def prepare_digits(
    root: str | Path, *, seed: int = 0, spurious_correlation: float = 0.95, batch_size: int = 64
) -> DigitsExperiment:
    """Write ColoredDigits (seeded) to ``root`` and build its loaders."""
    root = make_colored_digits(
        root, seed=seed, spurious_correlation=spurious_correlation, image_size=IMAGE_SIZE
    )
    manifest = load_waterbirds(root, require_images=True)
    loaders, names, counts = make_group_loaders(
        manifest, root, image_size=IMAGE_SIZE, batch_size=batch_size, seed=seed
    )
    return DigitsExperiment(root, manifest, loaders, names, counts)


def train_method(
    exp: DigitsExperiment,
    method: str,
    *,
    seed: int,
    epochs: int,
    width: int = STUDENT_WIDTH,
    teacher=None,
    eta: float = 0.01,
    lr: float = 3e-3,
    n_boot: int = 1000,
    name: str | None = None,
) -> MethodRun:
    """Train one model on ``exp`` (seeded) and score it on the test split."""
    seed_everything(seed)
    model = build_model(ModelSpec(arch="tiny_cnn", width=width, n_outputs=2, image_size=exp.image_size))
    distiller = GroupDistiller(
        method, n_groups=len(exp.group_names), eta=eta, epochs=epochs, lr=lr, group_counts=exp.group_counts
    )
    start = time.perf_counter()
    distiller.fit(
        model, exp.loaders["train"], exp.loaders["val"], teacher=teacher, description=name or method
    )
    wall = time.perf_counter() - start
    out = distiller.predict(distiller.model_, exp.loaders["test"])
    names = np.asarray(exp.group_names)[out["group"]]
    test = robustness_metrics(out["label"], out["pred"], groups=names, n_boot=n_boot, seed=seed)
    return MethodRun(
        name or method,
        distiller,
        test,
        float(distiller.fit_result_.best_score),
        distiller.best_epoch_,
        wall,
        count_parameters(model),
        {"last_epoch_val_acc_wg": float(distiller.history_[-1]["val_acc_wg"])},
    )


def results_table(runs: list[MethodRun]) -> pd.DataFrame:
    """One row per run: test average / worst-group accuracy with CIs, selected epoch, parameters."""
    rows = []
    for run in runs:
        avg, wg = run.test["acc_avg"], run.test["acc_wg"]
        rows.append(
            {
                "model": run.name,
                "params": run.n_params,
                "test acc_avg": avg["value"],
                "acc_avg 95% CI": _ci(avg),
                "test acc_wg": wg["value"],
                "acc_wg 95% CI": _ci(wg),
                "worst group": run.test["worst_group"],
                "val acc_wg": run.val_acc_wg,
                "epoch": run.best_epoch,
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
    exp = prepare_digits(out_dir / "coloreddigits", seed=seed)
    teacher = train_method(
        exp, "erm", seed=seed, epochs=epochs_teacher, width=TEACHER_WIDTH, name="teacher (ERM)"
    )
    t_model = teacher.distiller.model_
    runs = [
        teacher,
        train_method(exp, "erm", seed=seed, epochs=epochs_student, name="student ERM"),
        train_method(exp, "kd", seed=seed, epochs=epochs_student, teacher=t_model, name="student KD"),
        train_method(
            exp,
            "groupdistil",
            seed=seed,
            epochs=epochs_student,
            teacher=t_model,
            eta=1e-3,
            name="student GroupDistil",
        ),
    ]
    table = results_table(runs)
    table.to_csv(out_dir / "distill_results.csv", index=False)
    gd = runs[-1].distiller
    png = plot_group_weights(
        gd.group_weights_, exp.group_names, out_dir / "group_weights.png", title="GroupDistil group weights q"
    )
    train_counts = ", ".join(f"{n}: {c}" for n, c in zip(exp.group_names, exp.group_counts, strict=True))
    explanation = (
        "<p>A large network (the teacher) is compressed into a small one (the student, "
        f"{runs[0].n_params // max(runs[1].n_params, 1)}x fewer parameters). The training digits are "
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

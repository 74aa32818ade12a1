"""Benchmark rows for distillation: one named run of :func:`trustmed.distill.run.train_and_score`.

ColoredDigits (95 % spurious colour) is prepared once per seed; every teacher and student is trained
on it through the library's one train-and-score path, so a row here is what ``trustmed distill``
would produce with the same config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustmed.config import apply_values
from trustmed.distill.run import DistillConfig, DistillData, DistillResult, prepare_data, train_and_score

__all__ = ["MethodRun", "prepare_digits", "train_method"]


@dataclass
class MethodRun:
    """One trained model under a benchmark name."""

    name: str
    result: DistillResult

    @property
    def distiller(self):
        return self.result.distiller

    @property
    def test(self) -> dict[str, Any]:
        return self.result.metrics["test"]

    @property
    def val_acc_wg(self) -> float:
        return float(self.result.metrics["val_acc_wg_selected"])

    def record(self) -> dict[str, Any]:
        """The run's entry in ``results.json``."""
        metrics, distiller = self.result.metrics, self.distiller
        return {
            "test": self.test,
            "val_acc_wg": self.val_acc_wg,
            "best_epoch": metrics["best_epoch"],
            "epochs": distiller.epochs,
            "wall_time_s": metrics["wall_time_s"],
            "n_params": metrics["student_parameters"],
            "last_epoch_val_acc_wg": float(distiller.history_[-1]["val_acc_wg"]),
            "final_group_weights": distiller.group_weights_[-1].tolist(),
        }


def prepare_digits(workdir: str | Path, *, seed: int) -> DistillData:
    """ColoredDigits with ``DistillConfig``'s data defaults, generated (seeded) into ``workdir``."""
    return prepare_data(DistillConfig(seed=seed), workdir)


def train_method(
    data: DistillData,
    method: str,
    *,
    seed: int,
    epochs: int,
    n_boot: int,
    name: str,
    width: int | None = None,
    teacher: MethodRun | None = None,
    eta: float | None = None,
) -> MethodRun:
    """Train one model with ``DistillConfig``'s defaults except the values given, and score it."""
    values = {"method": method, "train.epochs": epochs, "student.width": width, "loss.eta": eta}
    cfg = apply_values(
        DistillConfig(seed=seed, n_boot=n_boot), {k: v for k, v in values.items() if v is not None}
    )
    model = teacher.result.model if teacher is not None else None
    return MethodRun(name, train_and_score(cfg, data, teacher=model, description=name))

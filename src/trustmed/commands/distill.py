"""``trustmed distill``: train a student with GroupDistil, vanilla KD, Group DRO or ERM.

The command parses its options and calls :func:`trustmed.distill.run.run_distill`, which owns the
config (:class:`~trustmed.distill.run.DistillConfig`) and writes ``model.safetensors``/``model.json``,
``metrics.json`` (WILDS keys with bootstrap CIs), ``predictions.csv``, ``history.csv``,
``group_weights.csv``/``.png`` and ``report.html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trustmed.commands.common import config_command, console

__all__ = ["distill_cmd", "register"]

_FLAGS = {
    "method": "method",
    "teacher": "teacher",
    "student_arch": "student.arch",
    "student_width": "student.width",
    "resume": "train.resume",
}


@config_command("trustmed.distill.run:DistillConfig", out="runs/distill", flags=_FLAGS)
def distill_cmd(
    cfg,
    out: Path,
    quiet: bool,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="groupdistil | kd | kd_sample | groupdro | erm (kd: groups weighted equally; "
            "kd_sample: per-sample KD; erm/groupdro: no teacher)",
        ),
    ] = None,
    teacher: Annotated[Path | None, typer.Option("--teacher", help="Teacher checkpoint folder.")] = None,
    student_arch: Annotated[str | None, typer.Option("--student-arch", help="Student architecture.")] = None,
    student_width: Annotated[int | None, typer.Option("--student-width", help="Student width.")] = None,
    resume: Annotated[
        bool | None, typer.Option("--resume/--no-resume", help="Continue from OUT/checkpoints.")
    ] = None,
) -> None:
    """Group-robust knowledge distillation (GroupDistil) and baselines.

    Trains a student with GroupDistil, KD (kd: group-uniform; kd_sample: per-sample), Group DRO or ERM
    and keeps the epoch with the best validation worst-group accuracy. --method erm or groupdro need no
    teacher, so the same command trains the teacher (give it a larger --student-width). With --set
    data.format=dataset the data is the registered dataset that a teacher from trustmed train was
    trained on, its groups formed from the columns in data.group_by (default: the first attribute and
    the label, e.g. female|1).

    Example: trustmed distill --method groupdistil --teacher runs/teacher --out runs/student
    """
    from trustmed.distill.run import run_distill

    test = run_distill(cfg, out).metrics["test"]
    if not quiet:
        console().print(
            f"[bold]{cfg.method}[/bold] test acc_avg {test['acc_avg']['value']:.3f}, acc_wg "
            f"{test['acc_wg']['value']:.3f} (worst group {test['worst_group']}); wrote {out}"
        )


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_cmd)

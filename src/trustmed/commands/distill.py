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

from trustmed.commands.common import (
    ConfigOpt,
    OutOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
    WaitOpt,
    claim,
    cli_command,
    console,
    load,
)

__all__ = ["distill_cmd", "register"]


@cli_command
def distill_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/distill"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    method: Annotated[
        str | None,
        typer.Option("--method", help="groupdistil | kd | groupdro | erm (erm/groupdro: no teacher)"),
    ] = None,
    teacher: Annotated[Path | None, typer.Option("--teacher", help="Teacher checkpoint folder.")] = None,
    student_arch: Annotated[str | None, typer.Option("--student-arch", help="Student architecture.")] = None,
    student_width: Annotated[int | None, typer.Option("--student-width", help="Student width.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoints.")] = False,
    wait: WaitOpt = False,
) -> None:
    """Group-robust knowledge distillation (GroupDistil) and baselines.

    Trains a student with GroupDistil, vanilla KD, Group DRO or ERM and keeps the epoch with the best
    validation worst-group accuracy. --method erm or groupdro need no teacher, so the same command
    trains the teacher (give it a larger --student-width).

    Example: trustmed distill --method groupdistil --teacher runs/teacher --out runs/student
    """
    from trustmed.distill.run import DistillConfig, run_distill

    claim(out, wait)

    flags = {
        "method": method,
        "teacher": teacher,
        "student.arch": student_arch,
        "student.width": student_width,
        "train.resume": resume or None,
    }
    cfg = load(DistillConfig, config, set_, seed, flags=flags)
    test = run_distill(cfg, out).metrics["test"]
    if not quiet:
        console().print(
            f"[bold]{cfg.method}[/bold] test acc_avg {test['acc_avg']['value']:.3f}, acc_wg "
            f"{test['acc_wg']['value']:.3f} (worst group {test['worst_group']}); wrote {out}"
        )


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_cmd)

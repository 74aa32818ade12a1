"""``trustmed train``: train an ERM classifier from a config (see docs/train.md).

Outputs are staged and appear in ``--out`` only when the run succeeds; the per-epoch checkpoints
are written straight to ``--out/checkpoints`` so that ``--resume`` finds them after a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trustmed.commands.common import config_command, console

__all__ = ["register", "train_cmd"]

ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue from the last epoch checkpoint in OUT/checkpoints.")
]


@config_command("trustmed.train.classifier:TrainConfig", out="runs/train")
def train_cmd(cfg, out: Path, quiet: bool, resume: ResumeOpt = False) -> None:
    """Train a binary image classifier (ERM) and write its checkpoint, predictions and history."""
    from trustmed.outdir import staged_dir, state_dir
    from trustmed.train.classifier import train_classifier

    with staged_dir(out) as tmp:
        result = train_classifier(cfg, tmp, resume=resume, checkpoint_dir=state_dir(out, "checkpoints"))
    if quiet:
        return
    splits = ", ".join(f"predictions_{s}.csv" for s in result.predictions)
    console().print(
        f"val AUC {result.val_auc:.3f} at epoch {result.best_epoch}/{result.fit.epochs} "
        f"({result.fit.wall_time_s:.1f}s, {result.fit.samples_seen} samples seen)\n"
        f"model: {out}/model.safetensors + model.json\npredictions: {out}/ ({splits})\n"
        f"history: {out}/history.json; checkpoints: {out}/checkpoints"
    )


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        help="Train an ERM classifier from a config (--resume continues a crashed run).\n\n"
        "Example: trustmed train --set data.root=runs/synthskin --out runs/train",
    )(train_cmd)

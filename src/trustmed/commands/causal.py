"""``trustmed causal``: fit and evaluate coVAE, and write the synthetic causal benchmarks.

Each command parses its options and calls one function of :mod:`trustmed.causal.pipeline`:

- ``trustmed causal fit``: :func:`~trustmed.causal.pipeline.run_fit` (``model.safetensors``,
  ``model.json``, ``latents.npy``, ``history.csv`` and, when true latents are known, ``metrics.json``).
- ``trustmed causal eval``: :func:`~trustmed.causal.pipeline.run_eval` (``latents.npy``, ``metrics.json``).
- ``trustmed causal synth-anm`` / ``synth-pendulum``: :func:`~trustmed.causal.pipeline.run_synth_anm`
  / :func:`~trustmed.causal.pipeline.run_synth_pendulum`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trustmed.commands.common import config_command, console

__all__ = ["eval_cmd", "fit_cmd", "register", "synth_anm_cmd", "synth_pendulum_cmd"]

ModelOpt = Annotated[
    Path | None, typer.Option("--model", help="Model folder written by 'trustmed causal fit'.")
]
DataOpt = Annotated[Path | None, typer.Option("--data", help="Data folder (x.npy, z.npy, adjacency.csv).")]
PIPELINE = "trustmed.causal.pipeline"


@config_command(f"{PIPELINE}:CausalFitConfig", out="runs/causal")
def fit_cmd(cfg, out: Path, quiet: bool):
    """Train coVAE (or the VAE baseline with --set train.alpha=0) and score its latents on validation.

    The prior is a learnable Gaussian mixture by default; --set model.prior=normal for N(0, I).

    Example: trustmed causal fit --set data.path=runs/anm --out runs/covae
    """
    from trustmed.causal.pipeline import run_fit

    fitted = run_fit(cfg, out)
    if not quiet:
        metrics = fitted.metrics or {}
        summary = {k: metrics[k] for k in ("mcc_pearson", "r2", "order_divergence") if k in metrics}
        console().print(f"coVAE fitted in {fitted.result.wall_time_s:.1f}s -> {out} {summary}")


@config_command(
    f"{PIPELINE}:CausalEvalConfig",
    out="runs/causal-eval",
    flags={"model": "model", "data": "data"},
    seed=False,
)
def eval_cmd(cfg, out: Path, quiet: bool, model: ModelOpt = None, data: DataOpt = None):
    """Score a fitted model's latents on a data folder against the true latents and DAG.

    Example: trustmed causal eval --model runs/covae --data runs/anm --out runs/covae_eval
    """
    from trustmed.causal.pipeline import run_eval

    metrics = run_eval(cfg, out)
    if not quiet:
        console().print({k: metrics[k] for k in ("mcc_pearson", "mcc_spearman", "r2", "order_divergence")})


@config_command(f"{PIPELINE}:SynthANMConfig", out="data/latent_anm")
def synth_anm_cmd(cfg, out: Path, quiet: bool):
    """Write a latent additive-noise-model data folder (x.npy, z.npy, adjacency.csv, meta.json).

    Example: trustmed causal synth-anm --out runs/anm
    """
    from trustmed.causal.pipeline import run_synth_anm

    data = run_synth_anm(cfg, out)
    if not quiet:
        console().print(f"latent ANM: {data.x.shape[0]} samples, {int(data.adjacency.sum())} edges -> {out}")


@config_command(f"{PIPELINE}:SynthPendulumConfig", out="data/pendulum")
def synth_pendulum_cmd(cfg, out: Path, quiet: bool):
    """Write a Pendulum image data folder (x.npy images, z.npy latents, adjacency.csv, meta.json).

    Example: trustmed causal synth-pendulum --out runs/pendulum
    """
    from trustmed.causal.pipeline import run_synth_pendulum

    data = run_synth_pendulum(cfg, out)
    if not quiet:
        console().print(f"pendulum: {data.x.shape[0]} images of {data.x.shape[-1]}px -> {out}")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        help="Causal representation learning: coVAE, SCORE ordering, synthetic benchmarks.",
        no_args_is_help=True,
    )
    sub.command("fit")(fit_cmd)
    sub.command("eval")(eval_cmd)
    sub.command("synth-anm")(synth_anm_cmd)
    sub.command("synth-pendulum")(synth_pendulum_cmd)
    app.add_typer(sub, name="causal")

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

__all__ = ["eval_cmd", "fit_cmd", "register", "synth_anm_cmd", "synth_pendulum_cmd"]

ModelOpt = Annotated[
    Path | None, typer.Option("--model", help="Model folder written by 'trustmed causal fit'.")
]
DataOpt = Annotated[Path | None, typer.Option("--data", help="Data folder (x.npy, z.npy, adjacency.csv).")]


@cli_command
def fit_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/causal"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
):
    """Train coVAE (or the VAE baseline with --set train.alpha=0) and score its latents on validation.

    Example: trustmed causal fit --set data.path=runs/anm --out runs/covae
    """
    from trustmed.causal.pipeline import CausalFitConfig, run_fit

    claim(out, wait)

    cfg = load(CausalFitConfig, config, set_, seed)
    fitted = run_fit(cfg, out)
    if not quiet:
        metrics = fitted.metrics or {}
        summary = {k: metrics[k] for k in ("mcc_pearson", "r2", "order_divergence") if k in metrics}
        console().print(f"coVAE fitted in {fitted.result.wall_time_s:.1f}s -> {out} {summary}")


@cli_command
def eval_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/causal-eval"),
    model: ModelOpt = None,
    data: DataOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
):
    """Score a fitted model's latents on a data folder against the true latents and DAG.

    Example: trustmed causal eval --model runs/covae --data runs/anm --out runs/covae_eval
    """
    from trustmed.causal.pipeline import CausalEvalConfig, run_eval

    claim(out, wait)

    cfg = load(CausalEvalConfig, config, set_, flags={"model": model, "data": data})
    metrics = run_eval(cfg, out)
    if not quiet:
        console().print({k: metrics[k] for k in ("mcc_pearson", "mcc_spearman", "r2", "order_divergence")})


@cli_command
def synth_anm_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("data/latent_anm"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
):
    """Write a latent additive-noise-model data folder (x.npy, z.npy, adjacency.csv, meta.json).

    Example: trustmed causal synth-anm --out runs/anm
    """
    from trustmed.causal.pipeline import SynthANMConfig, run_synth_anm

    claim(out, wait)

    data = run_synth_anm(load(SynthANMConfig, config, set_, seed), out)
    if not quiet:
        console().print(f"latent ANM: {data.x.shape[0]} samples, {int(data.adjacency.sum())} edges -> {out}")


@cli_command
def synth_pendulum_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("data/pendulum"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
):
    """Write a Pendulum image data folder (x.npy images, z.npy latents, adjacency.csv, meta.json).

    Example: trustmed causal synth-pendulum --out runs/pendulum
    """
    from trustmed.causal.pipeline import SynthPendulumConfig, run_synth_pendulum

    claim(out, wait)

    data = run_synth_pendulum(load(SynthPendulumConfig, config, set_, seed), out)
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

"""``trustmed causal``: fit and evaluate coVAE, and write the synthetic causal benchmarks.

- ``trustmed causal fit``: train a coVAE (or a VAE with ``train.alpha=0``) on a data folder or a
  generated benchmark; writes ``model.safetensors``, ``model.json``, ``latents.npy``,
  ``history.csv`` and, when true latents are known, ``metrics.json``.
- ``trustmed causal eval``: encode a data folder with a fitted model and score the latents
  (MCC, R², order divergence, SHD).
- ``trustmed causal synth-anm`` / ``synth-pendulum``: write a latent ANM or Pendulum data folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
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
from trustmed.config import Config
from trustmed.errors import InputError

__all__ = [
    "CausalDataConfig",
    "CausalModelConfig",
    "CausalTrainConfig",
    "CausalFitConfig",
    "CausalEvalConfig",
    "SynthANMConfig",
    "SynthPendulumConfig",
    "load_covae",
    "register",
]


class CausalDataConfig(Config):
    path: Path | None = None
    synthetic: str = "anm"
    n: int = 2000
    d: int = 5
    observed_dim: int = 20
    image_size: int = 32
    val_fraction: float = 0.2


class CausalModelConfig(Config):
    latent_dim: int = 5
    hidden: int = 64
    depth: int = 2
    prior: str = "normal"
    n_components: int = 8


class CausalTrainConfig(Config):
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    alpha: float = 10.0
    beta: float = 1.0
    tau: float = 1.0
    eta: float = 1e-3
    scale_aware: bool = False
    criterion: Literal["hessian", "residual"] = "hessian"
    warmup_epochs: int = 5
    ramp_epochs: int = 5
    reorder: bool = False


class CausalFitConfig(Config):
    seed: int = 0
    data: CausalDataConfig = CausalDataConfig()
    model: CausalModelConfig = CausalModelConfig()
    train: CausalTrainConfig = CausalTrainConfig()


class CausalEvalConfig(Config):
    seed: int = 0
    model: Path | None = None
    data: Path | None = None


class SynthANMConfig(Config):
    seed: int = 0
    n: int = 2000
    d: int = 5
    observed_dim: int | None = 20
    expected_edges: float | None = None


class SynthPendulumConfig(Config):
    seed: int = 0
    n: int = 2000
    image_size: int = 32
    noise: float = 0.02


def _load_data(cfg: CausalDataConfig, seed: int):
    from trustmed.data.synth.anm import load_anm, make_latent_anm
    from trustmed.data.synth.pendulum import make_pendulum

    if cfg.path is not None:
        return load_anm(cfg.path)
    if cfg.synthetic == "anm":
        return make_latent_anm(n=cfg.n, d=cfg.d, observed_dim=cfg.observed_dim, seed=seed)
    if cfg.synthetic == "pendulum":
        return make_pendulum(n=cfg.n, image_size=cfg.image_size, seed=seed)
    raise InputError(f"data.synthetic: expected 'anm' or 'pendulum', got {cfg.synthetic!r}")


def _normalise(x: np.ndarray, train_idx: np.ndarray) -> tuple[np.ndarray, dict]:
    if x.ndim == 2:
        mean, std = x[train_idx].mean(0), x[train_idx].std(0)
        std = np.where(std > 0, std, 1.0)
        return (x - mean) / std, {"mean": mean.tolist(), "std": std.tolist()}
    return x, {}


def _check_x(x: np.ndarray, where: str) -> None:
    if x.ndim not in (2, 4):
        raise InputError(
            f"{where}/x.npy: expected (n, D) vectors or (n, C, H, W) images, got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise InputError(f"{where}/x.npy: contains NaN or infinite values")


def _build(cfg: CausalModelConfig, x: np.ndarray):
    from trustmed.causal import CoVAE

    if x.ndim == 2:
        return CoVAE(
            x.shape[1],
            cfg.latent_dim,
            hidden=cfg.hidden,
            depth=cfg.depth,
            prior=cfg.prior,
            n_components=cfg.n_components,
        )
    return CoVAE(
        None,
        cfg.latent_dim,
        image_size=x.shape[-1],
        channels=x.shape[1],
        hidden=cfg.hidden,
        depth=cfg.depth,
        prior=cfg.prior,
        n_components=cfg.n_components,
    )


def _metrics(data, latents: np.ndarray, model_latent_dim: int) -> dict | None:
    from trustmed.metrics.causal import causal_metrics

    if data.z is None:
        return None
    if data.z.shape[1] > model_latent_dim:
        raise InputError(
            f"the data have {data.z.shape[1]} true latents, more than the model's latent size "
            f"{model_latent_dim}; set model.latent_dim >= {data.z.shape[1]}"
        )
    return causal_metrics(data.z, latents, data.adjacency)


@cli_command
def fit_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/causal"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
):
    """Train coVAE (train.alpha > 0) or a VAE baseline (train.alpha = 0) and score its latents."""
    import pandas as pd
    from safetensors.torch import save_file

    from trustmed.causal import encode, fit_covae, reconstruct
    from trustmed.io import atomic_write_text, write_json
    from trustmed.outdir import staged_dir
    from trustmed.utils import seed_everything

    claim(out, wait)

    cfg = load(CausalFitConfig, config, set_, seed)
    seed_everything(cfg.seed)
    data = _load_data(cfg.data, cfg.seed)
    x = np.asarray(data.x, dtype=np.float32)
    _check_x(x, str(cfg.data.path or "generated data"))
    if data.z is not None and data.z.shape[1] > cfg.model.latent_dim:
        raise InputError(
            f"the data have {data.z.shape[1]} true latents, more than model.latent_dim={cfg.model.latent_dim}"
        )
    if not 0 < cfg.data.val_fraction < 1:
        raise InputError(f"data.val_fraction: expected a value in (0, 1), got {cfg.data.val_fraction}")
    perm = np.random.default_rng(cfg.seed).permutation(len(x))
    n_val = max(1, int(round(cfg.data.val_fraction * len(x))))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    x_norm, norm = _normalise(x, train_idx)
    model = _build(cfg.model, x_norm)
    t = cfg.train
    result = fit_covae(
        model,
        x_norm[train_idx],
        x_val=x_norm[val_idx],
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        alpha=t.alpha,
        beta=t.beta,
        tau=t.tau,
        eta=t.eta,
        scale_aware=t.scale_aware,
        criterion=t.criterion,
        warmup_epochs=t.warmup_epochs,
        ramp_epochs=t.ramp_epochs,
        reorder=t.reorder,
        seed=cfg.seed,
    )
    latents = encode(model, x_norm)
    metrics = None
    if data.z is not None:
        from trustmed.metrics.causal import causal_metrics

        metrics = causal_metrics(data.z[val_idx], latents[val_idx], data.adjacency)
        metrics["split"] = "val"
        metrics["recon_mse"] = float(np.mean((reconstruct(model, x_norm[val_idx]) - x_norm[val_idx]) ** 2))
    with staged_dir(out) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(tmp / "model.safetensors"),
        )
        spec = {
            "kind": "covae",
            "architecture": vars(model.config),
            "normalisation": norm,
            "config": cfg.model_dump(mode="json"),
            "best_epoch": result.best_epoch,
            "wall_time_s": result.wall_time_s,
        }
        atomic_write_text(tmp / "model.json", json.dumps(spec, indent=2) + "\n")
        np.save(tmp / "latents.npy", latents)
        atomic_write_text(tmp / "history.csv", pd.DataFrame(result.history).to_csv(index=False))
        if metrics is not None:
            write_json(tmp / "metrics.json", metrics)
    if not quiet:
        summary = {
            k: metrics[k] for k in ("mcc_pearson", "r2", "order_divergence") if metrics and k in metrics
        }
        console().print(f"coVAE fitted in {result.wall_time_s:.1f}s -> {out} {summary}")


def load_covae(folder: Path):
    """Load ``model.safetensors`` + ``model.json`` written by ``trustmed causal fit``.

    A missing, truncated or damaged file, or a pickle-format file in the folder, is an
    :class:`InputError` naming the file.
    """
    from trustmed.causal import CoVAE
    from trustmed.io import check_finite, read_json, read_tensors, refuse_pickles

    folder = Path(folder)
    if not (folder / "model.json").is_file() or not (folder / "model.safetensors").is_file():
        raise InputError(f"{folder}: expected model.json and model.safetensors from 'trustmed causal fit'")
    refuse_pickles(folder, what="trustmed model folder")
    spec = read_json(folder / "model.json", what="model.json")
    if not isinstance(spec, dict) or spec.get("kind") != "covae":
        kind = spec.get("kind") if isinstance(spec, dict) else None
        raise InputError(f"{folder}/model.json: not a coVAE model (kind={kind!r})")
    norm = spec.get("normalisation") or {}
    try:
        arch = dict(spec["architecture"])
        model = CoVAE(arch.pop("input_dim"), arch.pop("latent_dim"), **arch)
        if norm and len(norm["mean"]) != len(norm["std"]):
            raise ValueError("normalisation mean and std differ in length")
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(
            f"{folder}/model.json: not a model.json from 'trustmed causal fit' ({str(exc).splitlines()[0]})"
        ) from None
    state = read_tensors(folder / "model.safetensors")
    check_finite(state, folder / "model.safetensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(
            f"{folder}/model.safetensors does not match model.json: {str(exc).splitlines()[0]}"
        ) from None
    return model, spec


@cli_command
def eval_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/causal-eval"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
):
    """Encode a data folder with a fitted model (--set model=DIR data=DIR) and score the latents."""
    from trustmed.causal import encode, reconstruct
    from trustmed.data.synth.anm import load_anm
    from trustmed.io import write_json
    from trustmed.outdir import staged_dir

    claim(out, wait)

    cfg = load(CausalEvalConfig, config, set_, seed)
    if cfg.model is None or cfg.data is None:
        raise InputError(
            "causal eval: set both 'model' (a folder from 'causal fit') and 'data' (a data folder)"
        )
    model, spec = load_covae(cfg.model)
    data = load_anm(cfg.data)
    x = np.asarray(data.x, dtype=np.float32)
    _check_x(x, str(cfg.data))
    if data.z is None:
        raise InputError(f"{cfg.data}: no z.npy with the true latents, so there is nothing to score against")
    norm = spec.get("normalisation") or {}
    if norm:
        if x.ndim != 2 or x.shape[1] != len(norm["mean"]):
            raise InputError(
                f"{cfg.data}/x.npy: shape {x.shape} does not fit the model's {len(norm['mean'])} inputs"
            )
        x = (x - np.asarray(norm["mean"])) / np.asarray(norm["std"])
    latents = encode(model, x)
    metrics = _metrics(data, latents, model.latent_dim)
    metrics["recon_mse"] = float(np.mean((reconstruct(model, x) - x) ** 2))
    with staged_dir(out) as tmp:
        np.save(tmp / "latents.npy", latents)
        write_json(tmp / "metrics.json", metrics)
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
    """Write a latent ANM data folder (x.npy, z.npy, adjacency.csv, meta.json)."""
    from trustmed.data.synth.anm import make_latent_anm, save_anm
    from trustmed.outdir import staged_dir

    claim(out, wait)

    cfg = load(SynthANMConfig, config, set_, seed)
    data = make_latent_anm(
        n=cfg.n, d=cfg.d, observed_dim=cfg.observed_dim, expected_edges=cfg.expected_edges, seed=cfg.seed
    )
    with staged_dir(out) as tmp:
        save_anm(data, tmp)
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
    """Write a Pendulum image data folder (x.npy images, z.npy latents, adjacency.csv, meta.json)."""
    from trustmed.data.synth.pendulum import make_pendulum, save_pendulum
    from trustmed.outdir import staged_dir

    claim(out, wait)

    cfg = load(SynthPendulumConfig, config, set_, seed)
    data = make_pendulum(n=cfg.n, image_size=cfg.image_size, seed=cfg.seed, noise=cfg.noise)
    with staged_dir(out) as tmp:
        save_pendulum(data, tmp)
    if not quiet:
        console().print(f"pendulum: {data.x.shape[0]} images of {cfg.image_size}px -> {out}")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        help="Causal representation learning: coVAE, SCORE ordering, synthetic benchmarks.",
        no_args_is_help=True,
    )
    sub.command("fit", help="Train coVAE (or the VAE baseline with --set train.alpha=0).")(fit_cmd)
    sub.command("eval", help="Score a fitted model's latents against the true latents and DAG.")(eval_cmd)
    sub.command("synth-anm", help="Write a latent additive-noise-model data folder.")(synth_anm_cmd)
    sub.command("synth-pendulum", help="Write a Pendulum image data folder.")(synth_pendulum_cmd)
    app.add_typer(sub, name="causal")

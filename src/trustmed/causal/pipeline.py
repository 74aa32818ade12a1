"""The coVAE pipeline: from data to a scored, saved model, one path for the CLI, the demo and benchmarks.

coVAE: "A Causal Ordering Prior for Unsupervised Representation Learning" (Kori et al., arXiv
2307.05704). The steps, one function each:

1. :func:`load_data`: a data folder (``x.npy``, optional ``z.npy`` and ``adjacency.csv``) or a
   generated latent ANM / Pendulum sample.
2. :func:`split_indices`: one seeded random validation split.
3. :func:`fit_normalisation` / :func:`normalise`: vectors are standardised per feature with the
   *training* split's mean and standard deviation (stored in ``model.json`` and reused by
   evaluation); images are used as they are.
4. :func:`fit_covae`: ``-ELBO + alpha * L_order`` through :func:`trustmed.train.fit`;
   :class:`CausalTrainConfig` holds every training setting and its one default.
5. :func:`score_latents`: MCC, R², order divergences (:mod:`trustmed.metrics.causal`, with SCORE
   on the learned latents) and the reconstruction error.
6. :func:`save_covae` / :func:`load_covae`: ``model.safetensors`` + ``model.json``.

:func:`fit_pipeline` runs steps 1-5 in memory; :func:`run_fit`, :func:`run_eval`,
:func:`run_synth_anm` and :func:`run_synth_pendulum` write a run folder (the ``trustmed causal``
commands).

>>> cfg = CausalFitConfig(data=CausalDataConfig(n=200, d=2, observed_dim=4),
...                       model=CausalModelConfig(latent_dim=2, hidden=8),
...                       train=CausalTrainConfig(epochs=3, batch_size=32, warmup_epochs=1, ramp_epochs=1))
>>> fitted = fit_pipeline(cfg)
>>> fitted.latents.shape, len(fitted.val_index), fitted.metrics["split"]
((200, 2), 40, 'val')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field

from trustmed.causal.covae import (
    AlphaSchedule,
    CoVAE,
    CoVAEConfig,
    check_order_settings,
    encode,
    ordering_loss,
    reconstruct,
    reorder_by_score,
)
from trustmed.causal.ordering import score_order
from trustmed.causal.stein import MIN_SAMPLES
from trustmed.config import Config
from trustmed.errors import InputError

if TYPE_CHECKING:
    from trustmed.data.synth.anm import ANMDataset
    from trustmed.train import FitResult

__all__ = [
    "CausalDataConfig",
    "CausalEvalConfig",
    "CausalFitConfig",
    "CausalModelConfig",
    "CausalTrainConfig",
    "CovaeFit",
    "SynthANMConfig",
    "SynthPendulumConfig",
    "build_covae",
    "evaluate_covae",
    "fit_covae",
    "fit_normalisation",
    "fit_pipeline",
    "load_covae",
    "load_data",
    "normalise",
    "run_eval",
    "run_fit",
    "run_synth_anm",
    "run_synth_pendulum",
    "save_covae",
    "score_latents",
    "split_indices",
]


class CausalDataConfig(Config):
    """The data: a folder (``path``) or, without one, a generated ``synthetic`` benchmark of ``n`` samples."""

    path: Path | None = None
    synthetic: Literal["anm", "pendulum"] = "anm"
    n: int = 2000
    d: int = 5
    observed_dim: int = 20
    image_size: int = 32
    val_fraction: float = Field(0.2, gt=0, lt=1)


class CausalModelConfig(Config):
    """The architecture of the :class:`~trustmed.causal.CoVAE` (input shape from the data).

    ``prior`` defaults to the learnable Gaussian mixture (``"gmm"``, ``n_components`` of them) of
    :class:`~trustmed.causal.CoVAEConfig`; ``"normal"`` is ``N(0, I)``.
    """

    latent_dim: int = CoVAEConfig.latent_dim
    hidden: int = CoVAEConfig.hidden
    depth: int = CoVAEConfig.depth
    prior: Literal["normal", "gmm"] = CoVAEConfig.prior
    n_components: int = CoVAEConfig.n_components


class CausalTrainConfig(Config):
    """Every setting of coVAE training, with its one default; ``alpha = 0`` trains the plain VAE.

    ``alpha`` is 0 for ``warmup_epochs`` epochs, then ramps up linearly over ``ramp_epochs`` epochs
    (:class:`~trustmed.causal.AlphaSchedule`); ``reorder`` puts the latent units in SCORE's order once,
    at the end of warm-up. ``beta`` weighs the KL term (``beta > 1``: the beta-VAE); ``tau``, ``eta``,
    ``scale_aware`` and ``criterion`` are those of :func:`~trustmed.causal.ordering_loss`.
    """

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
    """What ``trustmed causal fit`` runs: data, model and training, and the seed of every random choice."""

    seed: int = 0
    data: CausalDataConfig = CausalDataConfig()
    model: CausalModelConfig = CausalModelConfig()
    train: CausalTrainConfig = CausalTrainConfig()


class CausalEvalConfig(Config):
    """What ``trustmed causal eval`` scores: a ``model`` folder from ``causal fit`` on a ``data`` folder."""

    model: Path | None = None
    data: Path | None = None


class SynthANMConfig(Config):
    """A latent additive-noise-model data folder (:func:`trustmed.data.synth.anm.make_latent_anm`)."""

    seed: int = 0
    n: int = 2000
    d: int = 5
    observed_dim: int | None = 20
    expected_edges: float | None = None


class SynthPendulumConfig(Config):
    """A Pendulum image data folder (:func:`trustmed.data.synth.pendulum.make_pendulum`)."""

    seed: int = 0
    n: int = 2000
    image_size: int = 32
    noise: float = 0.02


def load_data(cfg: CausalDataConfig, seed: int) -> ANMDataset:
    """The folder ``cfg.path``, or the ``cfg.synthetic`` benchmark generated with ``seed``."""
    from trustmed.data.synth.anm import load_anm, make_latent_anm
    from trustmed.data.synth.pendulum import make_pendulum

    if cfg.path is not None:
        return load_anm(cfg.path)
    if cfg.synthetic == "anm":
        return make_latent_anm(n=cfg.n, d=cfg.d, observed_dim=cfg.observed_dim, seed=seed)
    return make_pendulum(n=cfg.n, image_size=cfg.image_size, seed=seed)


def _observations(x, where: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (2, 4):
        raise InputError(f"{where}: expected (n, D) vectors or (n, C, H, W) images, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(f"{where}: contains NaN or infinite values")
    return x


def _check_latent_count(z: np.ndarray, latent_dim: int) -> None:
    if z.shape[1] > latent_dim:
        raise InputError(
            f"the data have {z.shape[1]} true latents, more than the model's {latent_dim} "
            f"(model.latent_dim); every true latent needs a learned one"
        )


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices: a seeded permutation, its first ``val_fraction`` for validation.

    >>> train, val = split_indices(10, 0.2, seed=0)
    >>> len(train), len(val), sorted([*train, *val]) == list(range(10))
    (8, 2, True)
    """
    if not 0 < val_fraction < 1:
        raise InputError(f"data.val_fraction: expected a value in (0, 1), got {val_fraction}")
    n_val = max(1, int(round(val_fraction * n)))
    if n_val >= n:
        raise InputError(f"data: {n} samples leave none for training with val_fraction={val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


def fit_normalisation(x_train: np.ndarray) -> dict[str, list[float]]:
    """Per-feature ``mean`` and ``std`` of training vectors (std 1 for a constant feature); ``{}`` for images.

    >>> fit_normalisation(np.array([[0.0, 5.0], [2.0, 5.0]]))
    {'mean': [1.0, 5.0], 'std': [1.0, 1.0]}
    """
    if x_train.ndim != 2:
        return {}
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 0, std, 1.0)
    return {"mean": mean.tolist(), "std": std.tolist()}


def normalise(x: np.ndarray, normalisation: dict[str, list[float]]) -> np.ndarray:
    """``(x - mean) / std`` with the statistics of :func:`fit_normalisation` (``x`` itself for ``{}``)."""
    if not normalisation:
        return x
    mean = np.asarray(normalisation["mean"], dtype=np.float32)
    std = np.asarray(normalisation["std"], dtype=np.float32)
    return ((x - mean) / std).astype(np.float32)


def build_covae(cfg: CausalModelConfig, x: np.ndarray) -> CoVAE:
    """A :class:`~trustmed.causal.CoVAE` for samples shaped like ``x`` (vectors or images)."""
    shape = {"image_size": x.shape[-1], "channels": x.shape[1]} if x.ndim == 4 else {"input_dim": x.shape[1]}
    return CoVAE(**shape, **cfg.model_dump())


def _float_tensor(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return t


def fit_covae(
    model: CoVAE, x_train, *, x_val=None, config: CausalTrainConfig | None = None, seed: int = 0
) -> FitResult:
    """Train ``model`` on ``x_train`` with ``-ELBO + alpha * L_order`` through :func:`trustmed.train.fit`.

    ``config`` (default :class:`CausalTrainConfig`) holds every setting. Returns the
    :class:`trustmed.train.FitResult`; the history holds ``alpha`` and, with ``x_val``, ``val_recon``,
    ``val_kl`` and ``val_order`` (ordering loss of the validation posterior means) per epoch. The last
    epoch's weights are kept: no held-out data choose anything.

    With ``config.reorder`` (needs ``warmup_epochs > 0``) the latent units are renumbered once, at
    the first step after warm-up, into SCORE's order of the posterior means of up to 1024 training
    samples (:func:`~trustmed.causal.covae.reorder_by_score`, with the loss's ``criterion``); the
    order is logged.
    """
    from torch.utils.data import DataLoader, TensorDataset

    from trustmed.train import fit

    t = config or CausalTrainConfig()
    data = _float_tensor(x_train, "x_train")
    if t.batch_size < MIN_SAMPLES and t.alpha > 0:
        raise InputError(
            f"batch_size: the ordering loss needs at least {MIN_SAMPLES} samples, got {t.batch_size}"
        )
    if len(data) < t.batch_size:
        raise InputError(f"x_train: {len(data)} samples, fewer than one batch of {t.batch_size}")
    check_order_settings(t.criterion, t.scale_aware)
    if t.reorder and (t.warmup_epochs <= 0 or model.latent_dim < 2):
        raise InputError("reorder: needs warmup_epochs > 0 (units are ordered after warm-up) and 2+ latents")
    steps_per_epoch = len(data) // t.batch_size
    schedule = AlphaSchedule(t.alpha, t.warmup_epochs * steps_per_epoch, t.ramp_epochs * steps_per_epoch)
    loader = DataLoader(
        TensorDataset(data),
        batch_size=t.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    order_kwargs = dict(tau=t.tau, eta=t.eta, scale_aware=t.scale_aware, criterion=t.criterion)
    loss_kwargs = dict(beta=t.beta, **order_kwargs)

    def loss_fn(m, batch):
        if t.reorder and schedule.steps == schedule.warmup_steps:
            reorder_by_score(model, data, optimizer, eta=t.eta, criterion=t.criterion)
        return m(batch[0], alpha=schedule.step(), **loss_kwargs)["loss"]

    val = _float_tensor(x_val, "x_val") if x_val is not None else None

    def evaluate(m) -> dict[str, float]:
        row = {"alpha": schedule.last}
        if val is None:
            return row
        # The validation ELBO samples latents; a forked RNG keeps training's draws the same with or
        # without validation data.
        with torch.no_grad(), torch.random.fork_rng():
            sub = val[:1024].to(next(m.parameters()).device)
            terms = m.loss_terms(sub, alpha=0.0, beta=1.0)
            row.update({"val_recon": float(terms["recon"]), "val_kl": float(terms["kl"])})
            if m.latent_dim >= 2 and len(sub) >= MIN_SAMPLES:
                mu = m.encode(sub[:256])[0].double()
                row["val_order"] = float(ordering_loss(mu, **order_kwargs))
        return row

    torch.manual_seed(seed)
    return fit(
        model,
        optimizer,
        loader,
        loss_fn,
        epochs=t.epochs,
        evaluate=evaluate,
        description="coVAE" if t.alpha > 0 else "VAE",
    )


def score_latents(model: CoVAE, x: np.ndarray, z_true: np.ndarray, adjacency=None) -> dict:
    """Metrics of :func:`trustmed.metrics.causal.causal_metrics` for the posterior means of ``x``,
    with SCORE's order on the learned latents (``order_divergence_score``) and ``recon_mse``."""
    from trustmed.metrics.causal import causal_metrics

    _check_latent_count(z_true, model.latent_dim)
    metrics = causal_metrics(z_true, encode(model, x), adjacency, order_fn=score_order)
    metrics["recon_mse"] = float(np.mean((reconstruct(model, x) - x) ** 2))
    return metrics


@dataclass
class CovaeFit:
    """What :func:`fit_pipeline` produced.

    ``latents`` are the posterior means of every sample; ``metrics`` are scored on the validation
    split (``None`` when the data carry no true latents).
    """

    model: CoVAE
    config: CausalFitConfig
    data: ANMDataset
    normalisation: dict[str, list[float]]
    train_index: np.ndarray
    val_index: np.ndarray
    latents: np.ndarray
    result: FitResult
    metrics: dict | None

    def write(self, folder: str | Path) -> Path:
        """``model.safetensors``, ``model.json``, ``latents.npy``, ``history.csv`` and ``metrics.json``."""
        import pandas as pd

        from trustmed.io import atomic_write_text, write_json

        folder = Path(folder)
        save_covae(
            self.model,
            folder,
            normalisation=self.normalisation,
            config=self.config.model_dump(mode="json"),
            best_epoch=self.result.best_epoch,
            wall_time_s=self.result.wall_time_s,
        )
        np.save(folder / "latents.npy", self.latents)
        atomic_write_text(folder / "history.csv", pd.DataFrame(self.result.history).to_csv(index=False))
        if self.metrics is not None:
            write_json(folder / "metrics.json", self.metrics)
        return folder


def fit_pipeline(cfg: CausalFitConfig) -> CovaeFit:
    """Load the data, split, normalise with training statistics, train, encode and score on validation."""
    from trustmed.utils import seed_everything

    seed_everything(cfg.seed)
    data = load_data(cfg.data, cfg.seed)
    x = _observations(data.x, f"{cfg.data.path}/x.npy" if cfg.data.path else "generated data")
    if data.z is not None:
        _check_latent_count(data.z, cfg.model.latent_dim)
    train, val = split_indices(len(x), cfg.data.val_fraction, cfg.seed)
    normalisation = fit_normalisation(x[train])
    x = normalise(x, normalisation)
    model = build_covae(cfg.model, x)
    result = fit_covae(model, x[train], x_val=x[val], config=cfg.train, seed=cfg.seed)
    metrics = None
    if data.z is not None:
        metrics = {**score_latents(model, x[val], data.z[val], data.adjacency), "split": "val"}
    return CovaeFit(model, cfg, data, normalisation, train, val, encode(model, x), result, metrics)


def run_fit(cfg: CausalFitConfig, out: str | Path) -> CovaeFit:
    """:func:`fit_pipeline`, then :meth:`CovaeFit.write` into ``out`` (all or nothing)."""
    from trustmed.outdir import staged_dir

    fitted = fit_pipeline(cfg)
    with staged_dir(out) as tmp:
        fitted.write(tmp)
    return fitted


def save_covae(model: CoVAE, folder: str | Path, *, normalisation: dict, **metadata) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (architecture, input normalisation, ``metadata``)."""
    from safetensors.torch import save

    from trustmed.io import atomic_write_bytes, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / "model.safetensors", save(tensors))
    spec = {"kind": "covae", "architecture": asdict(model.config), "normalisation": normalisation}
    write_json(folder / "model.json", {**spec, **metadata})
    return folder


def load_covae(folder: str | Path) -> tuple[CoVAE, dict]:
    """Load ``model.safetensors`` + ``model.json`` written by :func:`save_covae` → ``(model, spec)``.

    A missing, truncated or damaged file, or a pickle-format file in the folder, is an
    :class:`InputError` naming the file.
    """
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
        if norm and not len(norm["mean"]) == len(norm["std"]) == model.config.input_dim:
            raise ValueError("normalisation mean and std do not match the input size")
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


def evaluate_covae(model_dir: str | Path, data_dir: str | Path) -> tuple[np.ndarray, dict]:
    """Encode the data folder ``data_dir`` with the model in ``model_dir`` → ``(latents, metrics)``.

    The data are normalised with the model's training statistics and scored against their true
    latents (``z.npy``) with :func:`score_latents`.
    """
    from trustmed.data.synth.anm import load_anm

    model, spec = load_covae(model_dir)
    data = load_anm(data_dir)
    where = f"{data_dir}/x.npy"
    x = _observations(data.x, where)
    if data.z is None:
        raise InputError(f"{data_dir}: no z.npy with the true latents, so there is nothing to score against")
    arch = model.config
    expected = (arch.input_dim,) if arch.input_dim else (arch.channels, arch.image_size, arch.image_size)
    if x.shape[1:] != expected:
        raise InputError(f"{where}: samples of shape {x.shape[1:]} do not fit the model's inputs {expected}")
    x = normalise(x, spec.get("normalisation") or {})
    return encode(model, x), score_latents(model, x, data.z, data.adjacency)


def run_eval(cfg: CausalEvalConfig, out: str | Path) -> dict:
    """:func:`evaluate_covae` of ``cfg.model`` on ``cfg.data``; writes ``latents.npy``, ``metrics.json``."""
    from trustmed.io import write_json
    from trustmed.outdir import staged_dir

    if cfg.model is None or cfg.data is None:
        raise InputError(
            "causal eval: give both --model (a folder from 'causal fit') and --data (a data folder)"
        )
    latents, metrics = evaluate_covae(cfg.model, cfg.data)
    with staged_dir(out) as tmp:
        np.save(tmp / "latents.npy", latents)
        write_json(tmp / "metrics.json", metrics)
    return metrics


def run_synth_anm(cfg: SynthANMConfig, out: str | Path) -> ANMDataset:
    """Generate a latent ANM into ``out``: ``x.npy``, ``z.npy``, ``adjacency.csv``, ``meta.json``."""
    from trustmed.data.synth.anm import make_latent_anm, save_anm
    from trustmed.outdir import staged_dir

    data = make_latent_anm(
        n=cfg.n, d=cfg.d, observed_dim=cfg.observed_dim, expected_edges=cfg.expected_edges, seed=cfg.seed
    )
    with staged_dir(out) as tmp:
        save_anm(data, tmp)
    return data


def run_synth_pendulum(cfg: SynthPendulumConfig, out: str | Path) -> ANMDataset:
    """Generate Pendulum images into ``out``: ``x.npy``, ``z.npy``, ``adjacency.csv``, ``meta.json``."""
    from trustmed.data.synth.pendulum import make_pendulum, save_pendulum
    from trustmed.outdir import staged_dir

    data = make_pendulum(n=cfg.n, image_size=cfg.image_size, seed=cfg.seed, noise=cfg.noise)
    with staged_dir(out) as tmp:
        save_pendulum(data, tmp)
    return data

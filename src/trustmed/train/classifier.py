"""ERM training of a binary image classifier from a config, and predictions from checkpoints.

Empirical risk minimisation (Vapnik, "Principles of Risk Minimization for Learning Theory",
NeurIPS 1991) with binary cross-entropy, optionally class-weighted, through the shared loop
(:func:`trustmed.train.fit`, Accelerate). The epoch with the best validation AUC is kept. A run
writes into ``out_dir``:

* ``model.safetensors`` + ``model.json`` — weights, the :class:`~trustmed.models.ModelSpec`, the
  config and training metadata (epochs, wall time, samples seen, best epoch);
* ``predictions_<split>.csv`` for every split — ``sample_id, label, score, <attributes>,
  patient_id, split`` with ``score`` the sigmoid probability;
* ``history.json`` — per-epoch train loss and validation AUC/loss.

The loop state is saved after every epoch in a ``checkpoints`` folder (``out_dir/checkpoints`` by
default); ``resume=True`` continues from it and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from trustmed.config import Config, config_fingerprint
from trustmed.data import load_dataset
from trustmed.data.images import make_loader
from trustmed.errors import InputError
from trustmed.io import write_json
from trustmed.models import Classifier, ModelSpec, build_model, load_checkpoint, save_checkpoint
from trustmed.train.loop import FitResult, fit, make_accelerator, predict
from trustmed.utils import seed_everything

__all__ = [
    "DataSection",
    "OptimSection",
    "TrainConfig",
    "TrainResult",
    "predict_scores",
    "prediction_table",
    "predictions_for_checkpoint",
    "train_classifier",
]

log = logging.getLogger(__name__)

DEFAULT_ATTRIBUTES = ("skin_tone", "fitzpatrick", "sex", "age_bin", "race")
"""Attributes carried into prediction tables when a checkpoint does not record its own."""


class DataSection(Config):
    """Which dataset to read and how to feed it.

    ``image_size``, ``channels`` and ``attributes`` default to the dataset's registry entry
    (:func:`trustmed.data.dataset_defaults`: e.g. 224 px, 1 channel, sex and age for chest X-rays);
    a plain manifest's attributes are the attribute columns it has. ``external_fraction``: when the
    dataset has no ``external`` split, that fraction of the training patients is carved into one
    (:func:`trustmed.data.manifest.ensure_external`, seeded by the run's seed, never sharing a
    patient with another split) and the splits are saved with the run (``splits.csv``); ``null``
    carves nothing.
    """

    dataset: str = "synthskin"
    root: Path = Path("runs/synthskin")
    options: dict[str, Any] = {}
    image_size: int | None = Field(None, ge=8)
    channels: Literal[1, 3] | None = None
    batch_size: int = Field(64, ge=1)
    augment: bool = True
    cache: bool | Literal["auto"] = "auto"
    num_workers: int = Field(0, ge=0)
    skip_bad_images: bool = False
    attributes: list[str] | None = None
    train_split: str = "train"
    val_split: str = "val"
    external_fraction: float | None = Field(0.05, gt=0, le=0.5)


class OptimSection(Config):
    """Optimiser and schedule."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    epochs: int = Field(8, ge=1)
    cosine: bool = True


class TrainConfig(Config):
    """``trustmed train`` config: data, model, optimiser, loss and seed.

    What is not given comes from the dataset's registry entry (image size, channels, attributes,
    and the architecture when ``model`` is not given). ``model.image_size`` and
    ``model.in_channels`` follow ``data`` unless set explicitly (then they must agree). ``model``
    may name a registered architecture or a ``factory`` (any torch module), and start from
    ``init_weights`` (a pretrained state dict) or ``weights`` (:class:`~trustmed.models.ModelSpec`).
    """

    data: DataSection = DataSection()
    model: ModelSpec = Field(default_factory=ModelSpec)
    optim: OptimSection = OptimSection()
    loss: Literal["bce", "weighted_bce"] = "bce"
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    cpu: bool = False
    select_metric: Literal["val_auc", "val_loss"] = "val_auc"
    seed: int = 0

    @model_validator(mode="after")
    def _sync_model(self) -> TrainConfig:
        from trustmed.data import dataset_defaults

        defaults = dataset_defaults(self.data.dataset)
        filled = {
            key: defaults.get(key, fallback)
            for key, fallback in (("image_size", 224), ("channels", 3), ("attributes", None))
            if getattr(self.data, key) is None
        }
        if filled:
            object.__setattr__(self, "data", self.data.model_copy(update=filled))
        if "arch" not in self.model.model_fields_set and self.model.factory is None:
            arch = defaults.get("arch", "resnet18")
            object.__setattr__(self, "model", self.model.model_copy(update={"arch": arch}))
        explicit = self.model.model_fields_set
        update = {}
        for key, value in (("image_size", self.data.image_size), ("in_channels", self.data.channels)):
            current = getattr(self.model, key)
            if key in explicit and current != value:
                source = "data.image_size" if key == "image_size" else "data.channels"
                raise ValueError(f"model.{key}={current} disagrees with {source}={value}")
            if current != value:
                update[key] = value
        if update:
            # Bypass validate_assignment, which would re-run this validator.
            object.__setattr__(self, "model", self.model.model_copy(update=update))
        return self


@dataclass
class TrainResult:
    """What :func:`train_classifier` returns."""

    out_dir: Path
    model: Classifier
    spec: ModelSpec
    fit: FitResult
    val_auc: float
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def best_epoch(self) -> int | None:
        return self.fit.best_epoch


class _GeneratorState:
    """Checkpoints a ``torch.Generator`` (the train loader's shuffling) alongside the loop state."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["state"])


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    logits = model(batch["image"]).float()
    return {"score": torch.sigmoid(logits), "logit": logits, "index": batch["index"].float()}


def _predict_loader(
    model: torch.nn.Module, loader, accelerator=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, logits and which rows were predicted, in manifest-row order; skipped rows get NaN."""
    out = predict(model, loader, _forward, accelerator=accelerator)
    scores = np.full(loader.dataset.n_rows, np.nan)
    logits = np.full(loader.dataset.n_rows, np.nan)
    index = out["index"].numpy().astype(np.int64)
    scores[index], logits[index] = out["score"].numpy(), out["logit"].numpy()
    predicted = np.zeros(loader.dataset.n_rows, dtype=bool)
    predicted[index] = True
    return scores, logits, predicted


def predict_scores(
    model: torch.nn.Module,
    manifest: pd.DataFrame,
    root: str | Path | None,
    *,
    image_size: int,
    batch_size: int = 256,
    channels: int = 3,
    accelerator=None,
    skip_bad_images: bool = False,
) -> np.ndarray:
    """Sigmoid scores of a binary classifier for every row of ``manifest``, in row order.

    With ``skip_bad_images``, rows whose image is missing or unreadable get NaN. A model whose
    output is NaN or infinite for a readable image is an :class:`InputError`.
    """
    loader = make_loader(
        manifest,
        root,
        image_size=image_size,
        batch_size=batch_size,
        shuffle=False,
        channels=channels,
        cache=False,
        skip_bad_images=skip_bad_images,
    )
    scores, logits, predicted = _predict_loader(model, loader, accelerator)
    bad = predicted & ~np.isfinite(logits)
    if bad.any():
        raise InputError(
            f"the model's output is NaN or infinite for {int(bad.sum())} of {int(predicted.sum())} images "
            f"(first: {manifest['sample_id'].iloc[int(np.flatnonzero(bad)[0])]}); are its weights finite?"
        )
    return scores


def prediction_table(
    manifest: pd.DataFrame, scores: np.ndarray, attributes: list[str] | tuple[str, ...]
) -> pd.DataFrame:
    """``sample_id, label, score, <attributes present>, patient_id, split`` for ``manifest``'s rows.

    Rows with a NaN score (an image skipped with ``skip_bad_images``) are left out.
    """
    attrs = [a for a in attributes if a in manifest.columns and a not in ("label", "split", "patient_id")]
    table = manifest[["sample_id", "label"]].copy()
    table["score"] = np.asarray(scores, dtype=np.float64)
    for attr in attrs:
        table[attr] = manifest[attr].to_numpy()
    table["patient_id"] = manifest["patient_id"].to_numpy()
    table["split"] = manifest["split"].to_numpy()
    return table[table["score"].notna()].reset_index(drop=True)


def _with_external(
    manifest: pd.DataFrame,
    fraction: float | None,
    *,
    seed: int,
    source: str,
    attribute: str | None,
    what: str,
) -> pd.DataFrame:
    """``manifest`` with an external split carved from ``source``'s patients when it has none
    (stratified by label and ``attribute``); unchanged when it has one or ``fraction`` is None."""
    from trustmed.data.manifest import ensure_external

    if fraction is None or "external" in set(manifest["split"].astype(str)):
        return manifest
    by = [attribute] if attribute is not None and attribute in manifest.columns else []
    return ensure_external(
        manifest, fraction=fraction, seed=seed, source=source, what=what, stratify=("label", *by)
    )


def read_training_data(data: DataSection, seed: int) -> pd.DataFrame:
    """The dataset of a training config, with the external split carved when it has none."""
    from trustmed.data import dataset_defaults

    manifest = load_dataset(data.dataset, data.root, **data.options)
    first = (data.attributes or dataset_defaults(data.dataset).get("attributes") or [None])[0]
    try:
        return _with_external(
            manifest,
            data.external_fraction,
            seed=seed,
            source=data.train_split,
            attribute=first,
            what=f"{data.dataset} ({data.root})",
        )
    except InputError as exc:
        raise InputError(
            f"{exc}; set data.external_fraction: null to train without an external split"
        ) from None


def dataset_of_checkpoint(
    checkpoint_dir: str | Path | None,
    metadata: dict[str, Any],
    *,
    dataset: str,
    root: str | Path,
    options: dict[str, Any] | None = None,
    attribute: str | None = None,
) -> pd.DataFrame:
    """Dataset ``dataset`` at ``root``, split as the checkpoint's training run split it.

    ``options`` default to the training run's when it used the same dataset. When the run saved
    its splits (``splits.csv`` in ``checkpoint_dir``) for this dataset and options, they are
    re-applied; a dataset still without an ``external`` split then gets one carved as training
    would carve it (:func:`read_training_data`: the run's ``external_fraction``, default 0.05, and
    seed), so that a model trained elsewhere is debiased on patients disjoint from every other split.
    """
    from trustmed.data.manifest import apply_split_table
    from trustmed.io import read_csv

    config = metadata.get("config", {})
    data_cfg = config.get("data", {})
    trained = dict(data_cfg.get("options", {})) if data_cfg.get("dataset") == dataset else None
    options = trained if options is None and trained is not None else dict(options or {})
    manifest = load_dataset(dataset, root, **options)
    saved = Path(checkpoint_dir) / "splits.csv" if checkpoint_dir is not None else None
    if saved is not None and trained == options and saved.is_file():
        table = read_csv(
            saved, required=("sample_id", "split"), what="saved splits", dtype={"sample_id": str}
        )
        manifest = apply_split_table(
            manifest.assign(sample_id=manifest["sample_id"].astype(str)), table, what=str(saved)
        )
    fraction = data_cfg.get("external_fraction", 0.05) if "data" in config else 0.05
    return _with_external(
        manifest,
        fraction,
        seed=int(config.get("seed", 0)),
        source=data_cfg.get("train_split", "train"),
        attribute=attribute or (list(data_cfg.get("attributes") or []) or [None])[0],
        what=f"{dataset} ({root})",
    )


def _split(manifest: pd.DataFrame, name: str, role: str) -> pd.DataFrame:
    part = manifest[manifest["split"] == name].reset_index(drop=True)
    if part.empty:
        raise InputError(
            f"{role} split {name!r} is empty; "
            f"splits in the data: {', '.join(sorted(manifest['split'].unique()))}"
        )
    if part["label"].nunique() < 2:
        raise InputError(
            f"{role} split {name!r} has a single class (label={part['label'].iloc[0]}); need both"
        )
    return part


def _optimizer(cfg: OptimSection, params) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_classifier(
    cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, checkpoint_dir: str | Path | None = None
) -> TrainResult:
    """Train an ERM classifier as ``cfg`` says and write its checkpoint, predictions and history.

    Parameters
    ----------
    cfg : the training config.
    out_dir : where ``model.safetensors``, ``model.json``, ``predictions_<split>.csv`` and
        ``history.json`` go.
    resume : continue from the last epoch saved in ``checkpoint_dir``.
    checkpoint_dir : per-epoch loop state (default ``out_dir/checkpoints``).
    """
    out = Path(out_dir)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else out / "checkpoints"
    seed_everything(cfg.seed)
    manifest = read_training_data(cfg.data, cfg.seed)
    from trustmed.data import dataset_defaults
    from trustmed.data.manifest import attribute_columns

    defaults = dataset_defaults(cfg.data.dataset).get("attributes")
    if cfg.data.attributes is None or cfg.data.attributes == defaults:
        # the dataset's own attributes, plus those this copy of it has (CheXpert's race with the
        # demographics file)
        found = [c for c in attribute_columns(manifest) if c not in (cfg.data.attributes or [])]
        attributes = [*(cfg.data.attributes or []), *found]
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"attributes": attributes})})
    missing = [a for a in cfg.data.attributes if a not in manifest.columns]
    if missing:
        raise InputError(
            f"data.attributes: {', '.join(missing)} not in dataset {cfg.data.dataset!r}; "
            f"columns: {', '.join(manifest.columns)}"
        )
    train_df = _split(manifest, cfg.data.train_split, "train")
    val_df = _split(manifest, cfg.data.val_split, "validation")
    data = cfg.data
    common = {
        "image_size": data.image_size,
        "channels": data.channels,
        "cache": data.cache,
        "num_workers": data.num_workers,
        "skip_bad_images": data.skip_bad_images,
    }
    train_loader = make_loader(
        train_df,
        data.root,
        batch_size=data.batch_size,
        shuffle=True,
        seed=cfg.seed,
        augment=data.augment,
        **common,
    )
    val_loader = make_loader(val_df, data.root, batch_size=256, shuffle=False, **common)
    spec = cfg.model
    model = build_model(spec)
    optimizer = _optimizer(cfg.optim, model.parameters())
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.optim.epochs)
        if cfg.optim.cosine
        else None
    )
    accelerator = make_accelerator(cfg.mixed_precision, cpu=cfg.cpu)
    n_pos = int(train_df["label"].sum())
    pos_weight = (len(train_df) - n_pos) / n_pos if cfg.loss == "weighted_bce" else 1.0
    weight = torch.tensor(pos_weight)
    val_labels = val_df["label"].to_numpy()
    skipped_in_batches = [0]

    def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "n_skipped" in batch:
            skipped_in_batches[0] += int(batch["n_skipped"])
        logits = m(batch["image"]).float()
        return torch.nn.functional.binary_cross_entropy_with_logits(
            logits, batch["label"].float(), pos_weight=weight.to(logits.device)
        )

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        scores, logits, _ = _predict_loader(m, val_loader, accelerator)
        ok = ~np.isnan(scores)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(logits[ok]), torch.tensor(val_labels[ok], dtype=torch.float64)
        )
        return {"val_auc": _auc(val_labels[ok], scores[ok]), "val_loss": float(bce)}

    result = fit(
        model,
        optimizer,
        train_loader,
        loss_fn,
        epochs=cfg.optim.epochs,
        accelerator=accelerator,
        evaluate=evaluate,
        select=cfg.select_metric,
        mode="max" if cfg.select_metric == "val_auc" else "min",
        scheduler=scheduler,
        checkpoint_dir=ckpt,
        resume=resume,
        stateful=[_GeneratorState(train_loader.generator)],
        fingerprint=config_fingerprint(cfg),
        description="train",
    )
    model = accelerator.unwrap_model(model).cpu().eval()
    best_row = next((r for r in result.history if r["epoch"] == result.best_epoch), result.history[-1])
    training = {
        "dataset": data.dataset,
        "root": str(data.root),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "best_val_auc": best_row.get("val_auc"),
        "wall_time_s": result.wall_time_s,
        "samples_seen": result.samples_seen,
        "parameter_updates": result.parameter_updates,
        "n_train": len(train_df),
        "n_val": len(val_df),
        "pos_weight": pos_weight,
        "attributes": list(data.attributes),
    }
    if data.skip_bad_images:
        # missing files (dropped when the datasets were built) + unreadable ones (dropped per batch,
        # counted once per epoch they were met)
        missing = train_loader.dataset.n_skipped + val_loader.dataset.n_skipped
        training["images_skipped"] = {"missing": missing, "unreadable_batch_drops": skipped_in_batches[0]}
        if missing or skipped_in_batches[0]:
            log.warning("skip_bad_images: %s", training["images_skipped"])
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, spec, out, config=cfg.model_dump(mode="json"), training=training)
    write_json(out / "history.json", {"history": result.history, **training})
    from trustmed.data.manifest import split_table

    split_table(manifest).to_csv(out / "splits.csv", index=False)
    predictions = {}
    scores = predict_scores(
        model,
        manifest,
        data.root,
        image_size=data.image_size,
        channels=data.channels,
        accelerator=accelerator,
        skip_bad_images=data.skip_bad_images,
    )
    for split_name in sorted(manifest["split"].unique()):
        rows = (manifest["split"] == split_name).to_numpy()
        table = prediction_table(manifest[rows], scores[rows], data.attributes)
        table.to_csv(out / f"predictions_{split_name}.csv", index=False)
        predictions[split_name] = table
    return TrainResult(
        out_dir=out,
        model=model.cpu().eval(),  # device-independent, like the checkpoint
        spec=spec,
        fit=result,
        val_auc=float(best_row.get("val_auc", float("nan"))),
        predictions=predictions,
    )


def predictions_for_checkpoint(
    checkpoint_dir: str | Path,
    *,
    dataset: str,
    root: str | Path,
    split: str | None = None,
    batch_size: int = 256,
    options: dict[str, Any] | None = None,
    attributes: list[str] | tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """Predictions table of a saved checkpoint on a dataset from the registry.

    ``options`` default to the training config's dataset options when the checkpoint was trained
    on the same dataset; ``attributes`` default to the ones it was trained with.
    """
    model, spec, metadata = load_checkpoint(checkpoint_dir)
    data_cfg = metadata.get("config", {}).get("data", {})
    if attributes is None:
        attributes = data_cfg.get("attributes") or list(DEFAULT_ATTRIBUTES)
    manifest = dataset_of_checkpoint(checkpoint_dir, metadata, dataset=dataset, root=root, options=options)
    if split is not None:
        if split not in set(manifest["split"]):
            raise InputError(
                f"split {split!r} not in dataset {dataset!r}; "
                f"splits: {', '.join(sorted(manifest['split'].unique()))}"
            )
        manifest = manifest[manifest["split"] == split].reset_index(drop=True)
    scores = predict_scores(
        model, manifest, root, image_size=spec.image_size, batch_size=batch_size, channels=spec.in_channels
    )
    return prediction_table(manifest, scores, attributes)

"""Group-robust distillation from config to scored model: one path for the CLI, the demo and benchmarks.

GroupDistil is the group-robust distillation of Vilouras et al. (MLMI 2023, arXiv 2311.00476); the
other methods are KD (Hinton et al., arXiv 1503.02531; ``kd``: group-uniform, i.e. GroupDistil with
``eta = 0``; ``kd_sample``: per-sample), Group DRO (Sagawa et al., arXiv
1911.08731) and ERM. :class:`DistillConfig` holds every setting with its one default. The steps:

1. :func:`load_teacher`: the teacher checkpoint of ``cfg.teacher`` (``groupdistil``/``kd``/``kd_sample``).
2. :func:`prepare_data`: the manifest (ColoredDigits is generated when it has no folder; with
   ``data.format: dataset`` any registered classification dataset, by default the teacher's, with
   groups joined from ``data.group_by`` columns), its loaders per split with integer group ids, and
   the training group counts.
3. :func:`train_and_score`: build the student, train it with
   :class:`~trustmed.distill.trainer.GroupDistiller` (epoch selected on validation worst-group
   accuracy) and score it on the validation and test splits (WILDS keys with bootstrap CIs,
   resampling whole patients whenever the manifest has patient ids).
4. :meth:`DistillResult.write`: ``model.safetensors``/``model.json``, ``metrics.json``,
   ``predictions.csv``, ``history.csv``, ``group_weights.csv``/``.png`` and ``report.html``.

:func:`run_distill` runs them into an output folder (``trustmed distill``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from torch import nn

from trustmed.config import Config, NBoot
from trustmed.distill.config import LossConfig, TrainConfig
from trustmed.distill.trainer import GroupDistiller, make_group_loaders, plot_group_weights
from trustmed.errors import InputError

if TYPE_CHECKING:
    from trustmed.models import ModelSpec

__all__ = [
    "DataConfig",
    "DistillConfig",
    "DistillData",
    "DistillResult",
    "LossConfig",
    "StudentConfig",
    "TrainConfig",
    "load_teacher",
    "prepare_data",
    "resolve_dataset",
    "run_distill",
    "train_and_score",
]

log = logging.getLogger(__name__)

_NEEDS_TEACHER = ("groupdistil", "kd", "kd_sample")
_SPLITS = ("train", "val", "test")
_HELD_OUT = ("external", "ood")  # never used for distillation, even with data.resplit
_CHEST_XRAY = ("chexpert", "mimic_cxr", "nih")
_DATASET_ONLY = ("dataset", "options", "group_by", "include_unknown")


class DataConfig(Config):
    """The data: ``format`` (ColoredDigits is generated when ``root`` is not given) and the loaders.

    With ``format: dataset`` the data is the registered classification dataset ``dataset``
    (:data:`trustmed.data.DATASETS`) read from ``root`` with loader ``options``; each of the three
    defaults to the teacher's (a checkpoint written by ``trustmed train``). The group of a row is its
    ``group_by`` values joined with ``|`` (default: the dataset's first attribute and the label, e.g.
    ``female|1``); rows with a missing or ``unknown`` value are left out unless ``include_unknown``.
    """

    format: Literal["coloreddigits", "waterbirds", "mnms", "manifest", "dataset"] = "coloreddigits"
    root: Path | None = None
    dataset: str | None = None
    options: dict[str, Any] = {}
    group_by: list[str] | None = None
    include_unknown: bool = False
    spurious_correlation: float = 0.95
    group_column: str = "group"
    image_size: int = 16
    channels: Literal[1, 3] = 3
    batch_size: int = 64
    augment: bool = False
    mnms_group_by: Literal["vendor", "centre"] = "vendor"
    resplit: bool = False


class StudentConfig(Config):
    """The student's architecture (:class:`trustmed.models.ModelSpec` fields; image size, channels
    and outputs follow the data): a registered ``arch``, or your own module (``factory``, ``kwargs``,
    ``head``), optionally started from pretrained weights (``init_weights``)."""

    arch: str = "tiny_cnn"
    width: int = 8
    dropout: float = 0.0
    factory: str | None = None
    kwargs: dict[str, Any] = {}
    head: str | None = None
    init_weights: Path | None = None
    input_mean: list[float] | None = None
    input_std: list[float] | None = None


class DistillConfig(Config):
    """What ``trustmed distill`` runs: the method, its teacher, data, student, loss and training."""

    seed: int = 0
    method: Literal["groupdistil", "kd", "kd_sample", "groupdro", "erm"] = "groupdistil"
    teacher: Path | None = None
    n_boot: NBoot = 1000
    data: DataConfig = DataConfig()
    student: StudentConfig = StudentConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()


@dataclass
class DistillData:
    """A manifest with group ids, its loaders per split, and the group names and training counts.

    ``data_config`` is ``cfg.data`` as used (``format: dataset``: with the dataset, root, options
    and ``group_by`` filled in) and ``summary`` what went into ``metrics.json`` under ``data``
    (``format: dataset``: rows left out per split)."""

    manifest: pd.DataFrame
    root: Path
    loaders: dict[str, Any]
    group_names: list[str]
    group_counts: np.ndarray
    n_classes: int
    image_size: int
    channels: int
    data_config: DataConfig | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def _default_attributes(name: str) -> list[str] | None:
    """The attributes dataset ``name`` is audited on by default (``trustmed.data.dataset_defaults``);
    ``None`` when the dataset fixes none (a user's manifest: its attribute columns are used)."""
    import trustmed.data

    defaults = getattr(trustmed.data, "dataset_defaults", None)
    if defaults is not None:
        return list(defaults(name).get("attributes") or []) or None
    return ["sex"] if name in _CHEST_XRAY or "cxr" in name else ["skin_tone"]


def _manifest_attributes(manifest: pd.DataFrame) -> list[str]:
    """The attribute columns of a loaded manifest (``trustmed.data.manifest.attribute_columns``)."""
    import trustmed.data.manifest

    columns = getattr(trustmed.data.manifest, "attribute_columns", None)
    if columns is not None:
        return list(columns(manifest))
    return [c for c in ("skin_tone", "sex", "age_bin") if c in manifest.columns]


def _teacher_data(path: Path) -> dict[str, Any]:
    """The data section of a teacher's config when it names a registered dataset, else ``{}``.

    ``trustmed train`` records ``dataset``, ``root``, ``options`` and ``attributes``; ``trustmed
    distill`` with ``format: dataset`` records ``dataset``, ``root``, ``options`` and ``group_by``.
    """
    from trustmed.models import load_checkpoint

    _, _, metadata = load_checkpoint(path)
    config = metadata.get("config")
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("dataset"), str):
        return {}
    if data.get("format", "dataset") != "dataset":
        return {}
    return data


def resolve_dataset(cfg: DistillConfig) -> DataConfig:
    """``cfg.data`` (``format: dataset``) with ``dataset``, ``root``, ``options`` and ``group_by`` filled in.

    Each value not given is the teacher's (``cfg.teacher``, whatever the method) when the teacher
    was trained on the same dataset; ``group_by`` defaults to the teacher's ``group_by``, else to
    ``[<first attribute>, label]`` with the teacher's attributes or the dataset's default ones
    (``None`` when the dataset has none: the loaded manifest's first attribute column is used).
    """
    data = cfg.data
    teacher = _teacher_data(cfg.teacher) if cfg.teacher is not None else {}
    name = data.dataset or teacher.get("dataset")
    if name is None:
        why = (
            f"teacher {cfg.teacher} records no dataset (checkpoints of `trustmed train` do)"
            if cfg.teacher is not None
            else "no teacher is given"
        )
        raise InputError(
            f"data.format=dataset needs data.dataset (a registered dataset name) or a teacher trained on "
            f"one; {why}"
        )
    same = teacher.get("dataset") == name
    root = data.root or (teacher.get("root") if same else None)
    if root is None:
        raise InputError(
            f"data.root is required for data.dataset={name!r} (the teacher was not trained on it)"
        )
    options = dict(data.options) or (dict(teacher.get("options") or {}) if same else {})
    group_by = data.group_by
    if group_by is None:
        if same and teacher.get("group_by"):
            group_by = list(teacher["group_by"])
        else:
            attributes = (list(teacher.get("attributes") or []) if same else []) or _default_attributes(name)
            group_by = [attributes[0], "label"] if attributes else None  # None: from the manifest's columns
    return data.model_copy(
        update={"dataset": name, "root": Path(root), "options": options, "group_by": group_by}
    )


def _as_text(column: pd.Series) -> pd.Series:
    """Values as strings (integral floats without ``.0``); missing stays missing."""
    if pd.api.types.is_float_dtype(column):
        known = column.dropna()
        if (known == known.round()).all():
            column = column.astype("Int64")
    return column.astype("string")


def _dataset_manifest(data: DataConfig) -> tuple[pd.DataFrame, Path, list[str], dict[str, Any]]:
    """The manifest of a registered dataset with the ``group_by`` group column, its image folder,
    ``group_by`` (``None`` in ``data``: the manifest's first attribute column and the label) and the
    summary (rows left out per split)."""
    from trustmed.data import dataset_kind, dataset_names, load_dataset

    name, root, group_by = data.dataset, Path(data.root), data.group_by
    kind = dataset_kind(name)
    if kind != "classification":
        hint = (
            f"use data.format={name}"
            if name in ("coloreddigits", "waterbirds", "mnms")
            else f"choose one of {', '.join(dataset_names('classification'))}"
        )
        raise InputError(f"data.dataset={name!r} is a {kind} dataset, not a classification one; {hint}")
    if group_by is not None and not group_by:
        raise InputError("data.group_by is empty; name the columns that form the groups, e.g. [sex, label]")
    manifest = load_dataset(name, root, **data.options)
    where = f"dataset {name!r} ({root})"
    if group_by is None:
        attributes = _manifest_attributes(manifest)
        if not attributes:
            raise InputError(
                f"{where} has no attribute column to form groups from; set data.group_by to columns of "
                f"{', '.join(map(str, manifest.columns))}, e.g. [<attribute>, label]"
            )
        group_by = [attributes[0], "label"]
    missing = [c for c in group_by if c not in manifest.columns]
    if missing:
        raise InputError(
            f"data.group_by {group_by}: {', '.join(map(repr, missing))} not in {where}; "
            f"columns: {', '.join(map(str, manifest.columns))}"
        )
    splits = sorted(manifest["split"].astype(str).unique())
    absent = [s for s in _SPLITS if s not in splits]
    if absent and not data.resplit:
        raise InputError(
            f"{where} has no {' or '.join(map(repr, absent))} split (splits: {', '.join(splits)}); "
            "distillation needs train, val and test (or data.resplit=true)"
        )
    used = ~manifest["split"].isin(_HELD_OUT) if data.resplit else manifest["split"].isin(_SPLITS)
    unused = manifest.loc[~used, "split"].value_counts().sort_index()
    if len(unused):
        log.info("%s: split(s) %s not used for distillation", where, ", ".join(unused.index))
    manifest = manifest[used.to_numpy()].reset_index(drop=True)

    values = {c: _as_text(manifest[c]) for c in group_by}
    unknown = {
        c: v.isna() | v.str.strip().str.lower().isin(["", "unknown"]).fillna(False) for c, v in values.items()
    }
    any_unknown = np.logical_or.reduce([u.to_numpy(dtype=bool) for u in unknown.values()])
    if data.group_column in manifest.columns and group_by != [data.group_column]:
        log.warning("%s: its column %r is replaced by the groups of data.group_by", where, data.group_column)
    parts = [values[c].where(~unknown[c], "unknown").astype(str) for c in group_by]
    groups = parts[0]
    for part in parts[1:]:
        groups = groups + "|" + part
    manifest[data.group_column] = groups.to_numpy()
    excluded = {s: int(any_unknown[(manifest["split"] == s).to_numpy()].sum()) for s in _SPLITS}
    if any_unknown.any() and not data.include_unknown:
        attrs = ", ".join(c for c in group_by if unknown[c].any())
        log.warning(
            "%s: %d of %d rows with a missing or unknown %s left out of the groups (%s); "
            "data.include_unknown=true keeps them as their own group",
            where,
            int(any_unknown.sum()),
            len(manifest),
            attrs,
            ", ".join(f"{s} {n}" for s, n in excluded.items()),
        )
        manifest = manifest[~any_unknown].reset_index(drop=True)
        if not data.resplit:
            for split in _SPLITS:
                if not (manifest["split"] == split).any():
                    raise InputError(
                        f"{where}: no row of split {split!r} has a known {attrs} "
                        "(data.include_unknown=true keeps unknown values as a group)"
                    )
    summary = {
        "dataset": name,
        "root": str(root),
        "options": dict(data.options),
        "group_by": group_by,
        "include_unknown": data.include_unknown,
        "excluded_unknown": {} if data.include_unknown else excluded,
        "unused_splits": {str(k): int(v) for k, v in unused.items()},
    }
    return manifest, root if root.is_dir() else root.parent, group_by, summary


def _read_manifest(
    cfg: DistillConfig, workdir: Path
) -> tuple[pd.DataFrame, Path, DataConfig, dict[str, Any]]:
    """The manifest (with a group column), the folder its image paths are relative to, the data
    settings as used and a summary for ``metrics.json`` (empty except for ``format: dataset``)."""
    from trustmed.data.manifest import read_manifest, stratified_split

    data, summary = cfg.data, {}
    if data.format != "dataset":
        defaults = DataConfig()
        stray = [k for k in _DATASET_ONLY if getattr(data, k) != getattr(defaults, k)]
        if stray:
            raise InputError(
                f"data.{stray[0]} applies only to data.format=dataset (data.format is {data.format!r})"
            )
    if data.format == "dataset":
        data = resolve_dataset(cfg)
        manifest, root, group_by, summary = _dataset_manifest(data)
        data = data.model_copy(update={"group_by": group_by})
    elif data.format == "coloreddigits":
        from trustmed.data.synth.digits import make_colored_digits
        from trustmed.data.waterbirds import load_waterbirds

        root = data.root or workdir / "coloreddigits"
        if not (root / "metadata.csv").is_file():
            make_colored_digits(
                root,
                seed=cfg.seed,
                spurious_correlation=data.spurious_correlation,
                image_size=data.image_size,
            )
        manifest = load_waterbirds(root, require_images=True)
    elif data.root is None:
        raise InputError(f"data.root is required for data.format={data.format!r}")
    elif data.format == "waterbirds":
        from trustmed.data.waterbirds import load_waterbirds

        root, manifest = data.root, load_waterbirds(data.root, require_images=True)
    elif data.format == "mnms":
        from trustmed.data.mnms import extract_slices, load_mnms

        subjects = load_mnms(data.root, group_by=data.mnms_group_by, require_images=True)
        root = workdir / "mnms_slices"
        manifest = extract_slices(subjects, data.root, root)
    else:
        manifest = read_manifest(data.root)
        root = data.root if data.root.is_dir() else data.root.parent
    if data.resplit:
        split = stratified_split(
            manifest,
            {"train": 0.6, "val": 0.2, "test": 0.2},
            seed=cfg.seed,
            stratify=(data.group_column, "label"),
        )
        manifest = manifest.assign(split=split.to_numpy())
    return manifest, Path(root), data, summary


def prepare_data(
    cfg: DistillConfig, workdir: str | Path, *, image_size: int | None = None, channels: int | None = None
) -> DistillData:
    """Read (or, for ColoredDigits without a ``data.root``, generate into ``workdir``) the data and
    build its loaders; ``image_size`` and ``channels`` (a teacher's) override ``cfg.data``'s."""
    manifest, root, data_config, summary = _read_manifest(cfg, Path(workdir))
    image_size = image_size or cfg.data.image_size
    channels = channels or cfg.data.channels
    loaders, names, counts = make_group_loaders(
        manifest,
        root,
        image_size=image_size,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        group_column=cfg.data.group_column,
        channels=channels,
        augment=cfg.data.augment,
    )
    n_classes = max(2, int(manifest["label"].max()) + 1)
    return DistillData(
        manifest, root, loaders, names, counts, n_classes, image_size, channels, data_config, summary
    )


def load_teacher(cfg: DistillConfig):
    """``(teacher, spec)`` from ``cfg.teacher``, or ``(None, None)`` for a method that needs none."""
    from trustmed.models import load_checkpoint

    if cfg.teacher is None:
        if cfg.method in _NEEDS_TEACHER:
            raise InputError(f"--method {cfg.method} needs --teacher CKPT (a model.safetensors folder)")
        return None, None
    if cfg.method not in _NEEDS_TEACHER:
        log.warning("--teacher is ignored by --method %s", cfg.method)
        return None, None
    teacher, spec, _ = load_checkpoint(cfg.teacher)
    return teacher, spec


def _build_student(cfg: DistillConfig, data: DistillData):
    from trustmed.models import ModelSpec, build_model

    fields = dict(
        cfg.student.model_dump(),
        n_outputs=data.n_classes,
        image_size=data.image_size,
        in_channels=data.channels,
    )
    try:
        spec = ModelSpec(**fields)
        model = build_model(spec)
        if model.head.out_features != data.n_classes:
            raise InputError(
                f"student.factory {spec.factory!r}: its head has {model.head.out_features} outputs, "
                f"the data has {data.n_classes} classes"
            )
        return model, spec
    except InputError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise InputError(
            f"student config does not build ({cfg.student.model_dump()}): {str(exc).splitlines()[0]}"
        ) from None


@dataclass
class DistillResult:
    """A trained student: its config, trainer (``model_``, ``history_``, ``group_weights_``), spec,
    ``metrics`` (``val`` and ``test`` with CIs, selection and cost) and ``predictions`` (val + test)."""

    config: DistillConfig
    distiller: GroupDistiller
    spec: ModelSpec
    group_names: list[str]
    metrics: dict[str, Any]
    predictions: pd.DataFrame

    @property
    def model(self) -> nn.Module:
        return self.distiller.model_

    def write(self, folder: str | Path) -> Path:
        """The checkpoint, ``metrics.json``, ``predictions.csv``, ``history.csv``, the group weights
        (``.csv`` and ``.png``) and ``report.html``."""
        from trustmed.io import write_json
        from trustmed.models import save_checkpoint
        from trustmed.report import Section, figure_to_html, table_to_html, write_report

        folder, cfg, names = Path(folder), self.config, self.group_names
        save_checkpoint(
            self.model, self.spec, folder, method=cfg.method, groups=names, config=cfg.model_dump(mode="json")
        )
        write_json(folder / "metrics.json", self.metrics)
        self.predictions.to_csv(folder / "predictions.csv", index=False)
        pd.DataFrame(self.distiller.history_).to_csv(folder / "history.csv", index=False)
        weights = self.distiller.group_weights_
        pd.DataFrame(weights, columns=names).rename_axis("epoch").reset_index().to_csv(
            folder / "group_weights.csv", index=False
        )
        png = plot_group_weights(weights, names, folder / "group_weights.png", title=f"{cfg.method}: q")
        test = self.metrics["test"]
        table = pd.DataFrame(  # a training group absent from the test split: n 0, accuracy NaN
            [
                {
                    "group": n,
                    "n": test.get(f"count_group:{n}", 0),
                    "acc": test.get(f"acc_group:{n}", {}).get("value", float("nan")),
                }
                for n in names
            ]
        )
        body = (
            f"<p>method {cfg.method}; selected epoch {self.distiller.best_epoch_}; test acc_avg "
            f"{test['acc_avg']['value']:.3f}, acc_wg {test['acc_wg']['value']:.3f}</p>"
            + table_to_html(table)
            + figure_to_html(png, "group weights per epoch")
        )
        write_report(folder / "report.html", "trustmed distill", [Section("Distillation", body)])
        return folder


def train_and_score(
    cfg: DistillConfig,
    data: DistillData,
    *,
    teacher: nn.Module | None = None,
    checkpoint_dir: str | Path | None = None,
    description: str | None = None,
) -> DistillResult:
    """Train a student on ``data`` as ``cfg`` says (seeded) and score it on the validation and test splits.

    Every random choice is seeded from ``cfg.seed`` here, so the same ``cfg`` gives the same numbers
    whatever ran before on ``data``. ``checkpoint_dir`` keeps the per-epoch state
    (``cfg.train.resume`` continues from it).
    """
    from trustmed.config import config_fingerprint
    from trustmed.metrics.robustness import robustness_metrics
    from trustmed.models import count_parameters
    from trustmed.utils import seed_everything

    if data.data_config is not None:  # the data as used (format dataset: the teacher's dataset, group_by)
        cfg = cfg.model_copy(update={"data": data.data_config})
    seed_everything(cfg.seed)
    student, spec = _build_student(cfg, data)
    distiller = GroupDistiller(
        cfg.method,
        n_groups=len(data.group_names),
        group_counts=data.group_counts.tolist(),
        epochs=cfg.train.epochs,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        cache_teacher=not cfg.data.augment,
        **cfg.loss.model_dump(),
    )
    distiller.fit(
        student,
        data.loaders["train"],
        data.loaders["val"],
        teacher=teacher,
        checkpoint_dir=checkpoint_dir,
        resume=cfg.train.resume,
        # more epochs or another n_boot may continue a run; anything else that shapes training may not
        fingerprint=config_fingerprint(cfg, exclude={"n_boot": True, "train": {"resume", "epochs"}}),
        description=description,
    )
    names = data.group_names
    metrics: dict = {"task": "robustness", "method": cfg.method, "groups": names, "n_boot": cfg.n_boot}
    if data.summary:
        metrics["data"] = data.summary
    frames = []
    for split in ("val", "test"):
        pred = distiller.predict(distiller.model_, data.loaders[split])
        rows = data.manifest[data.manifest["split"] == split].reset_index(drop=True).iloc[pred["index"]]
        metrics[split] = robustness_metrics(
            pred["label"],
            pred["pred"],
            groups=np.asarray(names)[pred["group"]],
            patient_ids=rows["patient_id"].to_numpy() if "patient_id" in rows else None,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
        )
        frame = rows.copy()
        frame["pred"] = pred["pred"]
        frame["score"] = pred["prob"][:, 1] if pred["prob"].shape[1] == 2 else pred["prob"].max(axis=1)
        frames.append(frame)
    metrics.update(
        best_epoch=distiller.best_epoch_,
        val_acc_wg_selected=distiller.fit_result_.best_score,
        student_parameters=count_parameters(distiller.model_),
        teacher_parameters=count_parameters(teacher) if teacher is not None else None,
        train_group_counts=dict(zip(names, data.group_counts.tolist(), strict=True)),
        wall_time_s=distiller.fit_result_.wall_time_s,
    )
    return DistillResult(cfg, distiller, spec, names, metrics, pd.concat(frames))


def run_distill(cfg: DistillConfig, out: str | Path) -> DistillResult:
    """Load the teacher and data, :func:`train_and_score`, and write every output into ``out``.

    The per-epoch state goes to ``out/checkpoints`` as training proceeds (``train.resume``
    continues from it); everything else is staged and appears in ``out`` when the run succeeds.
    """
    from trustmed.outdir import staged_dir, state_dir

    with staged_dir(out) as stage:
        teacher, t_spec = load_teacher(cfg)
        size = {"image_size": t_spec.image_size, "channels": t_spec.in_channels} if t_spec else {}
        data = prepare_data(cfg, stage, **size)
        binary_logit = t_spec is not None and t_spec.n_outputs == 1 and data.n_classes == 2
        if t_spec is not None and t_spec.n_outputs != data.n_classes and not binary_logit:
            raise InputError(
                f"{cfg.teacher}: teacher has {t_spec.n_outputs} output(s) but the data has "
                f"{data.n_classes} classes"
            )
        result = train_and_score(cfg, data, teacher=teacher, checkpoint_dir=state_dir(out, "checkpoints"))
        result.write(stage)
    return result

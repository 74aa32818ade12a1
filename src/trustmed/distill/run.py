"""Group-robust distillation from config to scored model: one path for the CLI, the demo and benchmarks.

GroupDistil is the group-robust distillation of Vilouras et al. (MLMI 2023, arXiv 2311.00476); the
other methods are vanilla KD (Hinton et al., arXiv 1503.02531), Group DRO (Sagawa et al., arXiv
1911.08731) and ERM. :class:`DistillConfig` holds every setting with its one default. The steps:

1. :func:`load_teacher`: the teacher checkpoint of ``cfg.teacher`` (methods ``groupdistil``/``kd``).
2. :func:`prepare_data`: the manifest (ColoredDigits is generated when it has no folder), its
   loaders per split with integer group ids, and the training group counts.
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
from dataclasses import dataclass
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
    "run_distill",
    "train_and_score",
]

log = logging.getLogger(__name__)

_NEEDS_TEACHER = ("groupdistil", "kd")


class DataConfig(Config):
    """The data: ``format`` (ColoredDigits is generated when ``root`` is not given) and the loaders."""

    format: Literal["coloreddigits", "waterbirds", "mnms", "manifest"] = "coloreddigits"
    root: Path | None = None
    spurious_correlation: float = 0.95
    group_column: str = "group"
    image_size: int = 16
    channels: Literal[1, 3] = 3
    batch_size: int = 64
    augment: bool = False
    mnms_group_by: Literal["vendor", "centre"] = "vendor"
    resplit: bool = False


class StudentConfig(Config):
    """The student's architecture (:class:`trustmed.models.ModelSpec` fields)."""

    arch: str = "tiny_cnn"
    width: int = 8
    dropout: float = 0.0


class DistillConfig(Config):
    """What ``trustmed distill`` runs: the method, its teacher, data, student, loss and training."""

    seed: int = 0
    method: Literal["groupdistil", "kd", "groupdro", "erm"] = "groupdistil"
    teacher: Path | None = None
    n_boot: NBoot = 1000
    data: DataConfig = DataConfig()
    student: StudentConfig = StudentConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()


@dataclass
class DistillData:
    """A manifest with group ids, its loaders per split, and the group names and training counts."""

    manifest: pd.DataFrame
    root: Path
    loaders: dict[str, Any]
    group_names: list[str]
    group_counts: np.ndarray
    n_classes: int
    image_size: int
    channels: int


def _read_manifest(cfg: DistillConfig, workdir: Path) -> tuple[pd.DataFrame, Path]:
    """The manifest (with a group column) and the folder its image paths are relative to."""
    from trustmed.data.manifest import read_manifest, stratified_split

    data = cfg.data
    if data.format == "coloreddigits":
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
    return manifest, Path(root)


def prepare_data(
    cfg: DistillConfig, workdir: str | Path, *, image_size: int | None = None, channels: int | None = None
) -> DistillData:
    """Read (or, for ColoredDigits without a ``data.root``, generate into ``workdir``) the data and
    build its loaders; ``image_size`` and ``channels`` (a teacher's) override ``cfg.data``'s."""
    manifest, root = _read_manifest(cfg, Path(workdir))
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
    return DistillData(manifest, root, loaders, names, counts, n_classes, image_size, channels)


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
        return build_model(spec), spec
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
        table = pd.DataFrame(
            [
                {"group": n, "n": test[f"count_group:{n}"], "acc": test[f"acc_group:{n}"]["value"]}
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

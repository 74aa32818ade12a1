"""``trustmed distill``: train a student with GroupDistil, vanilla KD, Group DRO or ERM.

GroupDistil is the group-robust distillation of Vilouras et al. (MLMI 2023, arXiv 2311.00476). The
teacher is any classifier checkpoint (``model.safetensors`` + ``model.json``); ``--method erm`` or
``--method groupdro`` need no teacher, so the same command trains the teacher itself (give it a
larger ``--student-width``). Models are selected on validation worst-group accuracy; the outputs are
``model.safetensors``/``model.json``, ``metrics.json`` (WILDS keys with bootstrap CIs),
``predictions.csv``, ``history.csv``, ``group_weights.csv``/``.png`` and ``report.html``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
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
from trustmed.config import Config, NBoot
from trustmed.errors import InputError

__all__ = ["DistillConfig", "distill_cmd", "register", "run_distill"]

log = logging.getLogger(__name__)


class DataConfig(Config):
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
    arch: str = "tiny_cnn"
    width: int = 8
    dropout: float = 0.0


class LossConfig(Config):
    temperature: float = 4.0
    alpha: float = 0.9
    eta: float = 0.01
    adjustment: float = 0.0


class TrainConfig(Config):
    epochs: int = 15
    lr: float = 3e-3
    weight_decay: float = 1e-4
    resume: bool = False


class DistillConfig(Config):
    seed: int = 0
    method: Literal["groupdistil", "kd", "groupdro", "erm"] = "groupdistil"
    teacher: Path | None = None
    n_boot: NBoot = 1000
    data: DataConfig = DataConfig()
    student: StudentConfig = StudentConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()


def _load_data(cfg: DistillConfig, out: Path) -> tuple[pd.DataFrame, Path]:
    """The manifest (with a group column) and the folder its image paths are relative to."""
    from trustmed.data.manifest import read_manifest, stratified_split

    data = cfg.data
    if data.format == "coloreddigits":
        from trustmed.data.synth.digits import make_colored_digits
        from trustmed.data.waterbirds import load_waterbirds

        root = data.root or out / "coloreddigits"
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
        root = out / "mnms_slices"
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


def _build_student(cfg: DistillConfig, n_classes: int, image_size: int, channels: int):
    from trustmed.models import ModelSpec, build_model

    spec_fields = dict(
        cfg.student.model_dump(), n_outputs=n_classes, image_size=image_size, in_channels=channels
    )
    try:
        spec = ModelSpec(**spec_fields)
        return build_model(spec), spec
    except InputError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise InputError(
            f"student config does not build ({cfg.student.model_dump()}): {str(exc).splitlines()[0]}"
        ) from None


def _load_teacher(cfg: DistillConfig, n_classes: int):
    from trustmed.models import load_checkpoint

    if cfg.teacher is None:
        if cfg.method in ("groupdistil", "kd"):
            raise InputError(f"--method {cfg.method} needs --teacher CKPT (a model.safetensors folder)")
        return None, None
    if cfg.method in ("erm", "groupdro"):
        log.warning("--teacher is ignored by --method %s", cfg.method)
        return None, None
    teacher, spec, _ = load_checkpoint(cfg.teacher)
    if spec.n_outputs != n_classes and not (spec.n_outputs == 1 and n_classes == 2):
        raise InputError(
            f"{cfg.teacher}: teacher has {spec.n_outputs} output(s) but the data has {n_classes} classes"
        )
    return teacher, spec


def run_distill(cfg: DistillConfig, out: Path) -> dict:
    """Run the command's work and write every output into ``out`` (all-or-nothing).

    The per-epoch state goes to ``out/checkpoints`` as training proceeds (``train.resume``
    continues from it); everything else is staged and appears in ``out`` when the run succeeds.
    """
    from trustmed.outdir import staged_dir, state_dir

    with staged_dir(out) as stage:
        return _distill(cfg, stage, state_dir(out, "checkpoints"))


def _distill(cfg: DistillConfig, stage: Path, checkpoints: Path) -> dict:
    from trustmed.config import config_fingerprint
    from trustmed.distill.trainer import GroupDistiller, make_group_loaders, plot_group_weights
    from trustmed.io import write_json
    from trustmed.metrics.robustness import robustness_metrics
    from trustmed.models import count_parameters, save_checkpoint
    from trustmed.report import Section, figure_to_html, table_to_html, write_report
    from trustmed.utils import seed_everything

    seed_everything(cfg.seed)
    manifest, root = _load_data(cfg, stage)
    n_classes = max(2, int(manifest["label"].max()) + 1)
    teacher, t_spec = _load_teacher(cfg, n_classes)
    image_size = t_spec.image_size if t_spec is not None else cfg.data.image_size
    channels = t_spec.in_channels if t_spec is not None else cfg.data.channels
    student, spec = _build_student(cfg, n_classes, image_size, channels)
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
    distiller = GroupDistiller(
        cfg.method,
        n_groups=len(names),
        group_counts=counts.tolist(),
        epochs=cfg.train.epochs,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        cache_teacher=not cfg.data.augment,
        **cfg.loss.model_dump(),
    )
    distiller.fit(
        student,
        loaders["train"],
        loaders["val"],
        teacher=teacher,
        checkpoint_dir=checkpoints,
        resume=cfg.train.resume,
        # more epochs or another n_boot may continue a run; anything else that shapes training may not
        fingerprint=config_fingerprint(cfg, exclude={"n_boot": True, "train": {"resume", "epochs"}}),
    )
    metrics: dict = {"task": "robustness", "method": cfg.method, "groups": names, "n_boot": cfg.n_boot}
    frames = []
    for split in ("val", "test"):
        pred = distiller.predict(distiller.model_, loaders[split])
        rows = manifest[manifest["split"] == split].reset_index(drop=True).iloc[pred["index"]]
        group_names = np.asarray(names)[pred["group"]]
        metrics[split] = robustness_metrics(
            pred["label"],
            pred["pred"],
            groups=group_names,
            patient_ids=rows["patient_id"].to_numpy(),
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
        train_group_counts=dict(zip(names, counts.tolist(), strict=True)),
        wall_time_s=distiller.fit_result_.wall_time_s,
    )
    weights = pd.DataFrame(distiller.group_weights_, columns=names).rename_axis("epoch").reset_index()
    save_checkpoint(
        distiller.model_, spec, stage, method=cfg.method, groups=names, config=cfg.model_dump(mode="json")
    )
    write_json(stage / "metrics.json", metrics)
    pd.concat(frames).to_csv(stage / "predictions.csv", index=False)
    pd.DataFrame(distiller.history_).to_csv(stage / "history.csv", index=False)
    weights.to_csv(stage / "group_weights.csv", index=False)
    png = plot_group_weights(
        distiller.group_weights_, names, stage / "group_weights.png", title=f"{cfg.method}: q"
    )
    test = metrics["test"]
    table = pd.DataFrame(
        [{"group": n, "n": test[f"count_group:{n}"], "acc": test[f"acc_group:{n}"]["value"]} for n in names]
    )
    body = (
        f"<p>method {cfg.method}; selected epoch {distiller.best_epoch_}; test acc_avg "
        f"{test['acc_avg']['value']:.3f}, acc_wg {test['acc_wg']['value']:.3f}</p>"
        + table_to_html(table)
        + figure_to_html(png, "group weights per epoch")
    )
    write_report(stage / "report.html", "trustmed distill", [Section("Distillation", body)])
    return metrics


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
    """Train a student with GroupDistil / KD / Group DRO / ERM; select on validation worst-group accuracy."""
    claim(out, wait)
    sets = list(set_ or [])
    for key, value in (
        ("method", method),
        ("teacher", teacher),
        ("student.arch", student_arch),
        ("student.width", student_width),
    ):
        if value is not None:
            sets.append(f"{key}={value}")
    if resume:
        sets.append("train.resume=true")
    cfg = load(DistillConfig, config, sets, seed)
    metrics = run_distill(cfg, out)
    if not quiet:
        test = metrics["test"]
        console().print(
            f"[bold]{cfg.method}[/bold] test acc_avg {test['acc_avg']['value']:.3f}, acc_wg "
            f"{test['acc_wg']['value']:.3f} (worst group {test['worst_group']}); wrote {out}"
        )


def register(app: typer.Typer) -> None:
    app.command("distill", help="Group-robust knowledge distillation (GroupDistil) and baselines.")(
        distill_cmd
    )

"""``trustmed ground``: zero-shot phrase grounding with an LDM's cross-attention.

``trustmed ground --model DIR --image X --text "…"`` (or ``trustmed ground run …``) writes the
heatmap and an overlay; ``trustmed ground eval`` scores a dataset; ``trustmed ground train-ldm``
trains the tiny SynthCXR LDM.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

import typer

from trustmed.commands.common import ConfigOpt, OutOpt, QuietOpt, SeedOpt, SetOpt, cli_command, console, load
from trustmed.config import Config
from trustmed.errors import InputError
from trustmed.grounding.train_ldm import TinyLDMConfig
from trustmed.grounding.zero_shot import GroundingConfig

__all__ = ["GroundRunConfig", "GroundEvalConfig", "TrainLDMConfig", "register"]

log = logging.getLogger(__name__)

ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Model folder (MONAI bundle or diffusers).")
]
ImageOpt = Annotated[Path | None, typer.Option("--image", help="Image file (PNG/JPEG/DICOM).")]
TextOpt = Annotated[str | None, typer.Option("--text", help="The phrase to ground.")]


class GroundRunConfig(Config):
    """Config of ``trustmed ground [run]``; ``model: tiny`` is the shipped SynthCXR LDM."""

    seed: int = 0
    model: str = "tiny"
    image: str | None = None
    text: str | None = None
    grounding: GroundingConfig = GroundingConfig()


class EvalData(Config):
    dataset: Literal["synthcxr", "mscxr", "vindr", "nih"] = "synthcxr"
    root: str | None = None
    split: str = "test"
    limit: int | None = None
    n_images: int = 200


class GroundEvalConfig(Config):
    """Config of ``trustmed ground eval``."""

    seed: int = 0
    model: str = "tiny"
    data: EvalData = EvalData()
    grounding: GroundingConfig = GroundingConfig()
    n_boot: int = 1000
    n_cases: int = 4


class TrainLDMConfig(TinyLDMConfig):
    """Config of ``trustmed ground train-ldm`` (the tiny LDM's settings plus an optional data root)."""

    data_root: str | None = None


def _model_dir(model: str) -> Path:
    from trustmed.grounding.ldm import tiny_ldm_path

    return tiny_ldm_path() if model == "tiny" else Path(model)


def _grounding_overrides(cfg_set, model, image, text):
    sets = list(cfg_set or [])
    for key, value in (("model", model), ("image", image), ("text", text)):
        if value is not None:
            sets.append(f"{key}={value}")
    return sets


def _run(config, set_, out, seed, quiet, model, image, text):
    import numpy as np

    from trustmed.data.mscxr import read_image
    from trustmed.grounding.heatmaps import plot_cases
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.zero_shot import ZeroShotGrounder
    from trustmed.io import staged_dir, write_json

    cfg = load(GroundRunConfig, config, _grounding_overrides(set_, model, None, None), seed)
    image_path = Path(image) if image is not None else (Path(cfg.image) if cfg.image else None)
    phrase = text if text is not None else cfg.text
    if image_path is None or phrase is None:
        raise InputError("trustmed ground: --image and --text are required (or image/text in the config)")
    cfg = cfg.model_copy(update={"grounding": cfg.grounding.model_copy(update={"seed": cfg.seed})})
    pixels = read_image(image_path)
    ldm = load_ldm(_model_dir(cfg.model))
    grounder = ZeroShotGrounder(ldm, cfg.grounding)
    heat = grounder.ground([pixels], [phrase])[0]
    with staged_dir(out) as tmp:
        np.save(tmp / "heatmap.npy", heat)
        plot_cases([{"image": pixels, "heatmap": heat, "title": phrase}], tmp / "overlay.png", columns=1)
        write_json(
            tmp / "run.json",
            {
                "image": str(image_path),
                "text": phrase,
                "model": str(_model_dir(cfg.model)),
                "config": cfg.model_dump(),
                "timing": grounder.timing_,
            },
        )
    if not quiet:
        console().print(f"heatmap → {out / 'heatmap.npy'}, overlay → {out / 'overlay.png'}")


@cli_command
def run_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/ground"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    model: ModelOpt = None,
    image: ImageOpt = None,
    text: TextOpt = None,
):
    """Ground one phrase in one image: writes heatmap.npy (NaN outside the field of view) and overlay.png."""
    _run(config, set_, out, seed, quiet, model, image, text)


def _load_table(cfg: GroundEvalConfig, work: Path):
    from trustmed.data.mscxr import load_mscxr
    from trustmed.data.nih import load_nih_bbox
    from trustmed.data.synth.cxr import make_synthcxr
    from trustmed.data.vindr import load_vindr

    data = cfg.data
    if data.dataset == "synthcxr":
        root = Path(data.root) if data.root else work / "synthcxr"
        if data.root is None:
            make_synthcxr(root, n_images=data.n_images, seed=cfg.seed + 1000)
        table = load_mscxr(root, split=data.split)
    elif data.root is None:
        raise InputError(f"data.root: required for dataset {data.dataset!r} (--set data.root=DIR)")
    elif data.dataset == "mscxr":
        table = load_mscxr(data.root, split=data.split if data.split != "all" else None)
    elif data.dataset == "vindr":
        table = load_vindr(data.root, split=data.split, sentences="auto")
    else:
        table = load_nih_bbox(data.root)
    return table.head(data.limit) if data.limit else table


@cli_command
def eval_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/ground_eval"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    model: ModelOpt = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="synthcxr, mscxr, vindr or nih.")] = None,
    root: Annotated[str | None, typer.Option("--root", help="Dataset folder.")] = None,
):
    """Score zero-shot grounding on a dataset: per-class table with CIs, metrics.json, best/worst figure."""
    import tempfile

    import pandas as pd

    from trustmed.data.mscxr import read_image
    from trustmed.grounding.heatmaps import plot_cases
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.zero_shot import ZeroShotGrounder, ground_table, score_table
    from trustmed.io import staged_dir, write_json
    from trustmed.metrics.grounding import summarize

    sets = _grounding_overrides(set_, model, None, None)
    sets += [f"data.{k}={v}" for k, v in (("dataset", dataset), ("root", root)) if v is not None]
    cfg = load(GroundEvalConfig, config, sets, seed)
    ldm = load_ldm(_model_dir(cfg.model))
    with tempfile.TemporaryDirectory() as work:
        table = _load_table(cfg, Path(work))
        grounder = ZeroShotGrounder(ldm, cfg.grounding.model_copy(update={"seed": cfg.seed}))
        heatmaps = ground_table(grounder, table)
        scores = score_table(table, heatmaps)
        summary = summarize(scores, n_boot=cfg.n_boot, seed=cfg.seed)
        order = scores["miou"].fillna(-1).to_numpy().argsort()
        picks = [*order[::-1][: cfg.n_cases], *order[: cfg.n_cases]]
        cases = [
            {
                "image": read_image(table.path.iloc[i]),
                "heatmap": heatmaps[i],
                "boxes": table.boxes.iloc[i],
                "title": f"{'best' if k < cfg.n_cases else 'worst'} mIoU {scores.miou.iloc[i]:.2f}\n"
                f"{table.text.iloc[i]}",
            }
            for k, i in enumerate(picks)
        ]
        rows = []
        for name, entry in summary["classes"].items():
            row = {"class": name, "n": entry["n"]}
            for metric in ("cnr", "miou", "auroc", "pointing_game"):
                row[metric] = entry[metric]["value"]
                row[f"{metric}_ci"] = entry[metric].get("ci")
            rows.append(row)
        summary.update(
            {"dataset": cfg.data.dataset, "model": str(_model_dir(cfg.model)), "timing": grounder.timing_}
        )
        with staged_dir(out) as tmp:
            scores.to_csv(tmp / "pairs.csv", index=False)
            pd.DataFrame(rows).to_csv(tmp / "classes.csv", index=False)
            write_json(tmp / "metrics.json", summary)
            plot_cases(cases, tmp / "cases.png", columns=cfg.n_cases)
    if not quiet:
        c = console()
        for metric in ("miou", "auroc", "cnr", "pointing_game"):
            m = summary["overall"][metric]
            ci = m.get("ci")
            ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""
            c.print(f"{metric}: {m['value']:.3f}{ci_text} (macro {summary['macro'][metric]['value']:.3f})")


@cli_command
def train_ldm_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/tiny_ldm"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
):
    """Train the tiny text-conditioned LDM on SynthCXR (CPU); the model is written to OUT/model."""
    from trustmed.grounding.train_ldm import train_tiny_ldm
    from trustmed.io import staged_dir, write_json

    cfg = load(TrainLDMConfig, config, set_, seed)
    settings = TinyLDMConfig(**cfg.model_dump(exclude={"data_root"}))
    if cfg.data_root is not None and not Path(cfg.data_root).is_dir():
        raise InputError(f"data_root {cfg.data_root}: folder not found")
    with staged_dir(out) as tmp:
        summary = train_tiny_ldm(settings, tmp, data_root=cfg.data_root)
        write_json(tmp / "summary.json", summary)
    if not quiet:
        console().print(f"model → {out / 'model'} ({summary['wall_time_s']:.0f} s)")


def register(app: typer.Typer) -> None:
    """Add the ``ground`` group (default action: ground one phrase) to ``app``."""
    group = typer.Typer(
        help="Zero-shot phrase grounding with an LDM's cross-attention.", invoke_without_command=True
    )

    @group.callback()
    @cli_command
    def default(
        ctx: typer.Context,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        out: OutOpt = Path("runs/ground"),
        seed: SeedOpt = None,
        quiet: QuietOpt = False,
        model: ModelOpt = None,
        image: ImageOpt = None,
        text: TextOpt = None,
    ):
        """Ground a phrase (same options as ``run``) unless a sub-command is given."""
        if ctx.invoked_subcommand is None:
            _run(config, set_, out, seed, quiet, model, image, text)

    group.command("run")(run_cmd)
    group.command("eval")(eval_cmd)
    group.command("train-ldm")(train_ldm_cmd)
    app.add_typer(group, name="ground")

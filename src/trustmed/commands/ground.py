"""``trustmed ground``: zero-shot phrase grounding with an LDM's cross-attention.

``trustmed ground --model DIR --image X --text "…"`` (or ``trustmed ground run …``) writes the
heatmap and an overlay; ``trustmed ground eval`` scores a dataset; ``trustmed ground tune`` learns an
anatomy-grounded prompt (``--prompt-tuning FILE`` applies it); ``trustmed ground train-ldm`` trains
the tiny SynthCXR LDM.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

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
from trustmed.grounding.prompt_tuning import LORA_RECIPE, PromptTuningConfig
from trustmed.grounding.train_ldm import TinyLDMConfig
from trustmed.grounding.zero_shot import GroundingConfig

__all__ = ["GroundRunConfig", "GroundEvalConfig", "GroundTuneConfig", "TrainLDMConfig", "register"]

log = logging.getLogger(__name__)

ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Model folder (MONAI bundle or diffusers).")
]
ImageOpt = Annotated[Path | None, typer.Option("--image", help="Image file (PNG/JPEG/DICOM).")]
TextOpt = Annotated[str | None, typer.Option("--text", help="The phrase to ground.")]
PromptOpt = Annotated[
    str | None,
    typer.Option("--prompt-tuning", help="A tuned prompt (prompt.safetensors or its folder) for this model."),
]


class GroundRunConfig(Config):
    """Config of ``trustmed ground [run]``; ``model: tiny`` is the shipped SynthCXR LDM."""

    seed: int = 0
    model: str = "tiny"
    image: str | None = None
    text: str | None = None
    prompt_tuning: str | None = None
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
    prompt_tuning: str | None = None
    grounding: GroundingConfig = GroundingConfig()
    n_boot: NBoot = 1000
    n_cases: int = 4


class TuneData(Config):
    """Training data of ``trustmed ground tune``: a grounding table and its anatomy masks.

    ``synthcxr`` generates ``n_images`` phantoms (seed ``seed + 7``) unless ``root`` is given;
    ``mscxr`` reads an MS-CXR-format CSV under ``root``. ``anatomy``: folder of
    ``<image_id>.npz`` masks (default ``root/anatomy``). Only sentences and anatomy are used.
    """

    dataset: Literal["synthcxr", "mscxr"] = "synthcxr"
    root: str | None = None
    anatomy: str | None = None
    split: str = "train"
    n_images: int = 1000
    limit: int | None = None


class GroundTuneConfig(Config):
    """Config of ``trustmed ground tune``."""

    seed: int = 0
    model: str = "tiny"
    data: TuneData = TuneData()
    prompt: PromptTuningConfig = PromptTuningConfig()


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


def _load_prompt(path: str | None):
    if path is None:
        return None
    from trustmed.grounding.prompt_tuning import TunedPrompt

    return TunedPrompt.load(path)


def _run(config, set_, out, seed, quiet, model, image, text, prompt_tuning=None, wait=False):
    import numpy as np

    from trustmed.data.mscxr import read_image
    from trustmed.grounding.heatmaps import plot_cases
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.zero_shot import ZeroShotGrounder
    from trustmed.io import write_json
    from trustmed.outdir import staged_dir

    claim(out, wait)
    sets = _grounding_overrides(set_, model, None, None)
    if prompt_tuning is not None:
        sets.append(f"prompt_tuning={prompt_tuning}")
    cfg = load(GroundRunConfig, config, sets, seed)
    image_path = Path(image) if image is not None else (Path(cfg.image) if cfg.image else None)
    phrase = text if text is not None else cfg.text
    if image_path is None or phrase is None:
        raise InputError("trustmed ground: --image and --text are required (or image/text in the config)")
    cfg = cfg.model_copy(update={"grounding": cfg.grounding.model_copy(update={"seed": cfg.seed})})
    pixels = read_image(image_path)
    ldm = load_ldm(_model_dir(cfg.model))
    grounder = ZeroShotGrounder(ldm, cfg.grounding, prompt=_load_prompt(cfg.prompt_tuning))
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
                "prompt_tuning": cfg.prompt_tuning,
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
    prompt_tuning: PromptOpt = None,
    wait: WaitOpt = False,
):
    """Ground one phrase in one image: writes heatmap.npy (NaN outside the field of view) and overlay.png."""
    _run(config, set_, out, seed, quiet, model, image, text, prompt_tuning, wait)


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
    prompt_tuning: PromptOpt = None,
    wait: WaitOpt = False,
):
    """Score zero-shot or prompt-tuned grounding on a dataset: per-class CIs, metrics.json, cases figure."""
    import tempfile

    import pandas as pd

    from trustmed.data.mscxr import read_image
    from trustmed.grounding.heatmaps import plot_cases
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.zero_shot import ZeroShotGrounder, ground_table, score_table
    from trustmed.io import write_json
    from trustmed.metrics.grounding import summarize
    from trustmed.outdir import staged_dir

    claim(out, wait)
    sets = _grounding_overrides(set_, model, None, None)
    sets += [f"data.{k}={v}" for k, v in (("dataset", dataset), ("root", root)) if v is not None]
    if prompt_tuning is not None:
        sets.append(f"prompt_tuning={prompt_tuning}")
    cfg = load(GroundEvalConfig, config, sets, seed)
    ldm = load_ldm(_model_dir(cfg.model))
    prompt = _load_prompt(cfg.prompt_tuning)
    with tempfile.TemporaryDirectory() as work:
        table = _load_table(cfg, Path(work))
        grounder = ZeroShotGrounder(ldm, cfg.grounding.model_copy(update={"seed": cfg.seed}), prompt=prompt)
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
            {
                "dataset": cfg.data.dataset,
                "model": str(_model_dir(cfg.model)),
                "prompt_tuning": cfg.prompt_tuning,
                "timing": grounder.timing_,
            }
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
def tune_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/prompt"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    model: ModelOpt = None,
    root: Annotated[str | None, typer.Option("--root", help="Training data folder.")] = None,
    anatomy: Annotated[
        str | None, typer.Option("--anatomy", help="Folder of <image_id>.npz anatomy masks.")
    ] = None,
    lora: Annotated[
        bool | None,
        typer.Option(
            "--lora/--no-lora",
            help="Also train LoRA on attn2 k/v with its recipe (soft-IoU loss, 4 input vectors, lr 0.01, "
            "token noise 0.5, 12 epochs).",
        ),
    ] = None,
    wait: WaitOpt = False,
):
    """Learn an anatomy-grounded prompt (context vectors, optional LoRA) for a frozen LDM, without boxes.

    Writes OUT/prompt.safetensors + OUT/prompt.json (apply with --prompt-tuning) and summary.json.
    """
    import tempfile

    from trustmed.data.mscxr import load_mscxr
    from trustmed.data.synth.cxr import make_synthcxr
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.prompt_tuning import build_examples, train_prompt
    from trustmed.io import write_json
    from trustmed.outdir import staged_dir

    claim(out, wait)
    sets = _grounding_overrides(set_, model, None, None)
    sets += [f"data.{k}={v}" for k, v in (("root", root), ("anatomy", anatomy)) if v is not None]
    if lora:  # the measured LoRA recipe (over the config file); a --set still changes any key
        sets[:0] = [f"prompt.{k}={str(v).lower()}" for k, v in LORA_RECIPE.items()]
    elif lora is not None:
        sets.append("prompt.lora=false")
    cfg = load(GroundTuneConfig, config, sets, seed)
    cfg = cfg.model_copy(update={"prompt": cfg.prompt.model_copy(update={"seed": cfg.seed})})
    ldm = load_ldm(_model_dir(cfg.model))
    data = cfg.data
    with tempfile.TemporaryDirectory() as work:
        if data.root is None:
            if data.dataset != "synthcxr":
                raise InputError(f"data.root: required for dataset {data.dataset!r} (--root DIR)")
            data_root = Path(work) / "synthcxr"
            make_synthcxr(data_root, n_images=data.n_images, seed=cfg.seed + 7)
        else:
            data_root = Path(data.root)
        table = load_mscxr(data_root, split=data.split if data.split != "all" else None)
        if data.limit:
            table = table.head(data.limit)
        examples = build_examples(ldm, table, Path(data.anatomy) if data.anatomy else data_root / "anatomy")
        prompt, summary = train_prompt(ldm, examples, cfg.prompt)
        with staged_dir(out) as tmp:
            prompt.save(tmp)
            write_json(tmp / "summary.json", {**summary, "config": cfg.model_dump()})
    if not quiet:
        c = console()
        counts = summary["counts"]
        c.print(
            f"{counts.get('with_location', 0)} sentences with a location, "
            f"{counts.get('no_location', 0)} without, "
            f"{counts.get('unknown_location', 0)} with an unmapped location word (denoising only)"
        )
        c.print(f"prompt → {out / 'prompt.safetensors'} ({summary['cpu_time_s'] / 60:.1f} CPU-minutes)")


@cli_command
def train_ldm_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/tiny_ldm"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
):
    """Train the tiny text-conditioned LDM on SynthCXR (CPU); the model is written to OUT/model."""
    from trustmed.grounding.train_ldm import train_tiny_ldm
    from trustmed.io import write_json
    from trustmed.outdir import staged_dir

    claim(out, wait)

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
        prompt_tuning: PromptOpt = None,
        wait: WaitOpt = False,
    ):
        """Ground a phrase (same options as ``run``) unless a sub-command is given."""
        if ctx.invoked_subcommand is None:
            _run(config, set_, out, seed, quiet, model, image, text, prompt_tuning, wait)

    group.command("run")(run_cmd)
    group.command("eval")(eval_cmd)
    group.command("tune")(tune_cmd)
    group.command("train-ldm")(train_ldm_cmd)
    app.add_typer(group, name="ground")

"""``trustmed ground``: phrase grounding with an LDM's cross-attention.

``ground run`` grounds one phrase in one image, ``ground eval`` scores a dataset, ``ground tune``
learns an anatomy-grounded prompt (``--prompt-tuning DIR`` applies it), ``ground train-ldm``
trains the tiny SynthCXR LDM and ``ground describe`` prints what a run would do on a model. Each
parses its options and calls one function of :mod:`trustmed.grounding.pipeline`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trustmed.commands.common import ConfigOpt, SetOpt, cli_command, config_command, console, load

__all__ = ["run_cmd", "describe_cmd", "eval_cmd", "tune_cmd", "train_ldm_cmd", "register"]

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model folder (MONAI bundle or diffusers); tiny: the shipped one."),
]
PromptOpt = Annotated[
    Path | None,
    typer.Option("--prompt-tuning", help="A tuned prompt (its folder or prompt.safetensors) for this model."),
]


PIPELINE = "trustmed.grounding.pipeline"


@config_command(
    f"{PIPELINE}:GroundRunConfig",
    out="runs/ground",
    flags={"model": "model", "image": "image", "text": "text", "prompt_tuning": "prompt_tuning"},
)
def run_cmd(
    cfg,
    out: Path,
    quiet: bool,
    model: ModelOpt = None,
    image: Annotated[Path | None, typer.Option("--image", help="Image file (PNG/JPEG/DICOM).")] = None,
    text: Annotated[str | None, typer.Option("--text", help="The phrase to ground.")] = None,
    prompt_tuning: PromptOpt = None,
):
    """Ground one phrase in one image: writes heatmap.npy (NaN outside the field of view) and overlay.png.

    Example: trustmed ground run --image runs/synthcxr/files/p10/p10000000/s50000000/synth000-000000.png --text "left pleural effusion" --out runs/ground
    """  # noqa: E501
    from trustmed.grounding.pipeline import ground_image

    ground_image(cfg, out)
    if not quiet:
        console().print(f"heatmap → {out / 'heatmap.npy'}, overlay → {out / 'overlay.png'}")


@cli_command
def describe_cmd(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    prompt_tuning: PromptOpt = None,
):
    """Print, as JSON, what grounding will run on a model: resolved layers (index, name, resolution),
    timesteps and recorded band, token set, text mask, channels, device. Check it before a long run;
    --config takes a ground run or ground eval config (its model, prompt_tuning and grounding keys).

    Example: trustmed ground describe --model tiny
    """
    import json
    import sys

    from trustmed.grounding.pipeline import GroundDescribeConfig, describe_model

    flags = {"model": model, "prompt_tuning": prompt_tuning}
    cfg = load(
        GroundDescribeConfig, config, set_, flags=flags, flag_names={"prompt_tuning": "--prompt-tuning"}
    )
    sys.stdout.write(json.dumps(describe_model(cfg), indent=2) + "\n")


@config_command(
    f"{PIPELINE}:GroundEvalConfig",
    out="runs/ground_eval",
    flags={
        "model": "model",
        "dataset": "data.dataset",
        "root": "data.root",
        "prompt_tuning": "prompt_tuning",
    },
)
def eval_cmd(
    cfg,
    out: Path,
    quiet: bool,
    model: ModelOpt = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="synthcxr, mscxr, vindr or nih.")] = None,
    root: Annotated[str | None, typer.Option("--root", help="Dataset folder.")] = None,
    prompt_tuning: PromptOpt = None,
):
    """Score zero-shot or prompt-tuned grounding on a dataset: per-class CIs, metrics.json, cases figure.

    Example: trustmed ground eval --out runs/ground_eval
    """
    from trustmed.grounding.pipeline import METRICS, evaluate_grounding
    from trustmed.outdir import is_main_process

    summary = evaluate_grounding(cfg, out)
    if not quiet and is_main_process():
        c = console()
        for metric in METRICS:
            m = summary["overall"][metric]
            ci = m.get("ci")
            ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""
            c.print(f"{metric}: {m['value']:.3f}{ci_text} (macro {summary['macro'][metric]['value']:.3f})")


def _tune_config(given: dict) -> str:
    """``--lora`` starts from the LoRA recipe's config (whose defaults are that recipe)."""
    return f"{PIPELINE}:{'LoraTuneConfig' if given.get('prompt.lora') else 'GroundTuneConfig'}"


@config_command(
    _tune_config,
    out="runs/prompt",
    flags={"model": "model", "root": "data.root", "anatomy": "data.anatomy", "lora": "prompt.lora"},
)
def tune_cmd(
    cfg,
    out: Path,
    quiet: bool,
    model: ModelOpt = None,
    root: Annotated[str | None, typer.Option("--root", help="Training data folder.")] = None,
    anatomy: Annotated[
        str | None, typer.Option("--anatomy", help="Folder of <image_id>.npz anatomy masks.")
    ] = None,
    lora: Annotated[
        bool | None,
        typer.Option(
            "--lora/--no-lora",
            help="Also train LoRA on attn2 k/v, starting from its recipe (soft-IoU loss, 4 input vectors, "
            "lr 0.01, no token noise, 12 epochs); the config file and --set still change any key.",
        ),
    ] = None,
):
    """Learn an anatomy-grounded prompt (context vectors, optional LoRA) for a frozen LDM, without boxes.

    Writes OUT/prompt.safetensors + OUT/prompt.json (apply with --prompt-tuning) and summary.json.

    Example: trustmed ground tune --out runs/prompt
    """
    from trustmed.grounding.pipeline import tune_prompt

    summary = tune_prompt(cfg, out)
    if not quiet:
        c = console()
        counts = summary["counts"]
        c.print(
            f"{counts.get('with_location', 0)} sentences with a location, "
            f"{counts.get('no_location', 0)} without, "
            f"{counts.get('unknown_location', 0)} with an unmapped location word (denoising only)"
        )
        c.print(f"prompt → {out / 'prompt.safetensors'} ({summary['cpu_time_s'] / 60:.1f} CPU-minutes)")


@config_command(f"{PIPELINE}:TrainLDMConfig", out="runs/tiny_ldm")
def train_ldm_cmd(cfg, out: Path, quiet: bool):
    """Train the tiny text-conditioned LDM on SynthCXR (CPU); the model is written to OUT/model.

    Example: trustmed ground train-ldm --out runs/tiny_ldm
    """
    from trustmed.grounding.pipeline import train_ldm

    summary = train_ldm(cfg, out)
    if not quiet:
        console().print(f"model → {out / 'model'} ({summary['wall_time_s']:.0f} s)")


def register(app: typer.Typer) -> None:
    """Add the ``ground`` group (``run``, ``describe``, ``eval``, ``tune``, ``train-ldm``) to ``app``."""
    group = typer.Typer(
        help="Phrase grounding with an LDM's cross-attention: run, describe, eval, tune, train-ldm.",
        no_args_is_help=True,
    )
    group.command("run")(run_cmd)
    group.command("describe")(describe_cmd)
    group.command("eval")(eval_cmd)
    group.command("tune")(tune_cmd)
    group.command("train-ldm")(train_ldm_cmd)
    app.add_typer(group, name="ground")

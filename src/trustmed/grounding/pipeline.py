"""The grounding pipelines: ground one image, evaluate on a dataset, tune a prompt, train the tiny LDM.

``trustmed ground run``, ``eval``, ``tune`` and ``train-ldm`` each call one function here with its
config (:func:`ground_image`, :func:`evaluate_grounding`, :func:`tune_prompt`, :func:`train_ldm`),
which writes the command's outputs into ``out`` all or nothing. :func:`evaluate_maps` scores the
heatmaps of any grounder the same way for the command, ``trustmed demo`` and the benchmarks.

>>> GroundEvalConfig().model, GroundEvalConfig().data.dataset, GroundTuneConfig().prompt.epochs
('tiny', 'synthcxr', 24)
>>> LoraTuneConfig().prompt.lora
True
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict

from trustmed.config import Config, NBoot
from trustmed.errors import InputError
from trustmed.grounding.prompt_tuning.config import LoraPromptTuningConfig, PromptTuningConfig
from trustmed.grounding.train_ldm import TinyLDMConfig
from trustmed.grounding.zero_shot import GroundingConfig

__all__ = [
    "METRICS",
    "GroundRunConfig",
    "GroundDescribeConfig",
    "EvalData",
    "GroundEvalConfig",
    "TuneData",
    "GroundTuneConfig",
    "LoraTuneConfig",
    "TrainLDMConfig",
    "ldm_folder",
    "load_prompt",
    "ground_image",
    "describe_model",
    "evaluate_maps",
    "load_eval_table",
    "evaluate_grounding",
    "tune_prompt",
    "train_ldm",
]

METRICS = ("cnr", "miou", "auroc", "pointing_game")


class GroundRunConfig(Config):
    """Config of :func:`ground_image`; ``model: tiny`` is the shipped SynthCXR LDM."""

    seed: int = 0
    model: str = "tiny"
    image: Path | None = None
    text: str | None = None
    prompt_tuning: Path | None = None
    grounding: GroundingConfig = GroundingConfig()


class EvalData(Config):
    """The evaluation table: ``synthcxr`` generates ``n_images`` phantoms (seed + 1000) unless ``root``
    is given; ``mscxr``, ``vindr`` and ``nih`` read ``root``; ``limit`` keeps the first pairs."""

    dataset: Literal["synthcxr", "mscxr", "vindr", "nih"] = "synthcxr"
    root: str | None = None
    split: str = "test"
    limit: int | None = None
    n_images: int = 200


class GroundEvalConfig(Config):
    """Config of :func:`evaluate_grounding`."""

    seed: int = 0
    model: str = "tiny"
    data: EvalData = EvalData()
    prompt_tuning: Path | None = None
    grounding: GroundingConfig = GroundingConfig()
    n_boot: NBoot = 1000
    n_cases: int = 4


class TuneData(Config):
    """Training data of :func:`tune_prompt`: a grounding table and its anatomy masks.

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
    """Config of :func:`tune_prompt`."""

    seed: int = 0
    model: str = "tiny"
    data: TuneData = TuneData()
    prompt: PromptTuningConfig = PromptTuningConfig()


class LoraTuneConfig(GroundTuneConfig):
    """:class:`GroundTuneConfig` starting from the LoRA recipe (:class:`LoraPromptTuningConfig`)."""

    prompt: LoraPromptTuningConfig = LoraPromptTuningConfig()


class TrainLDMConfig(TinyLDMConfig):
    """Config of :func:`train_ldm`: the tiny LDM's settings and an optional SynthCXR folder to read."""

    data_root: str | None = None


def ldm_folder(model: str) -> Path:
    """The model folder: ``tiny`` is the shipped SynthCXR LDM, anything else a path."""
    from trustmed.grounding.ldm import tiny_ldm_path

    return tiny_ldm_path() if model == "tiny" else Path(model)


def load_prompt(path: str | Path | None):
    """The :class:`~trustmed.grounding.prompt_tuning.TunedPrompt` at ``path`` (``None``: none)."""
    if path is None:
        return None
    from trustmed.grounding.prompt_tuning import TunedPrompt

    return TunedPrompt.load(path)


class GroundDescribeConfig(GroundRunConfig):
    """Config of :func:`describe_model`: the ``model``, ``prompt_tuning`` and ``grounding`` keys of a
    ``ground run`` or ``ground eval`` config (its other top-level keys are ignored)."""

    model_config = ConfigDict(extra="ignore")


def describe_model(cfg: GroundRunConfig) -> dict:
    """What ``ground run``/``ground eval`` with ``cfg.grounding`` would run on ``cfg.model``
    (:func:`~trustmed.grounding.zero_shot.describe`): resolved layers, timesteps, band, token set,
    text mask, channels. Loads the model and makes one UNet call."""
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.zero_shot import describe

    ldm = load_ldm(ldm_folder(cfg.model))
    grounding = cfg.grounding.model_copy(update={"seed": cfg.seed})
    return describe(ldm, grounding, prompt=load_prompt(cfg.prompt_tuning))


def ground_image(cfg: GroundRunConfig, out: str | Path) -> dict:
    """Ground ``cfg.text`` in ``cfg.image``: writes ``heatmap.npy`` (NaN outside the field of view),
    ``overlay.png`` and ``run.json`` into ``out``; returns the run record."""
    from trustmed.data.mscxr import read_image
    from trustmed.grounding.heatmaps import plot_cases
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.zero_shot import ZeroShotGrounder
    from trustmed.io import write_json
    from trustmed.outdir import staged_dir

    if cfg.image is None or cfg.text is None:
        raise InputError("ground run: an image and a text are required (--image and --text, or image/text)")
    pixels = read_image(cfg.image)
    ldm = load_ldm(ldm_folder(cfg.model))
    grounding = cfg.grounding.model_copy(update={"seed": cfg.seed})
    grounder = ZeroShotGrounder(ldm, grounding, prompt=load_prompt(cfg.prompt_tuning))
    heat = grounder.ground([pixels], [cfg.text])[0]
    record = {
        "image": str(cfg.image),
        "text": cfg.text,
        "model": str(ldm_folder(cfg.model)),
        "prompt_tuning": None if cfg.prompt_tuning is None else str(cfg.prompt_tuning),
        "config": cfg.model_copy(update={"grounding": grounder.config}).model_dump(mode="json"),
        "timing": grounder.timing_,
    }
    with staged_dir(out) as tmp:
        np.save(tmp / "heatmap.npy", heat)
        plot_cases([{"image": pixels, "heatmap": heat, "title": cfg.text}], tmp / "overlay.png", columns=1)
        write_json(tmp / "run.json", record)
    return record


def evaluate_maps(
    table: pd.DataFrame,
    heatmaps: list[np.ndarray],
    *,
    metrics: tuple[str, ...] = METRICS,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Per-pair metrics and their summary (per class, macro, micro, bootstrap CIs) of ``heatmaps``.

    The summary also holds ``laterality_accuracy`` (over images with the same finding on both
    sides, how often the map puts more mass on the side the sentence names; ``None`` without such
    pairs) and ``n_laterality_pairs``.
    """
    from trustmed.data.mscxr import boxes_to_mask
    from trustmed.grounding.zero_shot import score_table
    from trustmed.metrics.grounding import laterality_correct, laterality_pairs, summarize

    scores = score_table(table, heatmaps)
    summary = summarize(scores, metrics=list(metrics), n_boot=n_boot, seed=seed)
    pairs = laterality_pairs(table)
    masks = {}
    for i in {k for pair in pairs for k in pair}:
        h, w = heatmaps[i].shape
        masks[i] = boxes_to_mask(table.boxes.iloc[i], h, w)
    correct = [laterality_correct(heatmaps[i], masks[i], masks[j]) for i, j in pairs]
    summary["laterality_accuracy"] = float(np.mean(correct)) if correct else None
    summary["n_laterality_pairs"] = len(pairs)
    return scores, summary


def load_eval_table(data: EvalData, seed: int, work: str | Path) -> pd.DataFrame:
    """The evaluation table of ``data`` (a generated SynthCXR goes under ``work``)."""
    from trustmed.data.mscxr import load_mscxr
    from trustmed.data.nih import load_nih_bbox
    from trustmed.data.synth.cxr import make_synthcxr
    from trustmed.data.vindr import load_vindr

    if data.dataset == "synthcxr":
        root = Path(data.root) if data.root else Path(work) / "synthcxr"
        if data.root is None:
            make_synthcxr(root, n_images=data.n_images, seed=seed + 1000)
        table = load_mscxr(root, split=data.split)
    elif data.root is None:
        raise InputError(f"data.root: required for dataset {data.dataset!r} (--root DIR)")
    elif data.dataset == "mscxr":
        table = load_mscxr(data.root, split=data.split if data.split != "all" else None)
    elif data.dataset == "vindr":
        table = load_vindr(data.root, split=data.split, sentences="auto")
    else:
        table = load_nih_bbox(data.root)
    return table.head(data.limit) if data.limit else table


def _cases(table: pd.DataFrame, heatmaps, scores: pd.DataFrame, n: int) -> list[dict]:
    """The ``n`` best and ``n`` worst pairs by mIoU (``heatmaps[i]``: row i's map), as
    :func:`~.heatmaps.plot_cases` draws them."""
    from trustmed.data.mscxr import read_image
    from trustmed.grounding.distributed import case_rows

    picks = case_rows(scores, n)
    return [
        {
            "image": read_image(table.path.iloc[i]),
            "heatmap": heatmaps[i],
            "boxes": table.boxes.iloc[i],
            "title": f"{'best' if k < n else 'worst'} mIoU {scores.miou.iloc[i]:.2f}\n{table.text.iloc[i]}",
        }
        for k, i in enumerate(picks)
    ]


def _class_rows(summary: dict) -> pd.DataFrame:
    rows = []
    for name, entry in summary["classes"].items():
        row = {"class": name, "n": entry["n"]}
        for metric in METRICS:
            row[metric] = entry[metric]["value"]
            row[f"{metric}_ci"] = entry[metric].get("ci")
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate_grounding(cfg: GroundEvalConfig, out: str | Path) -> dict:
    """Ground every pair of a dataset and score it: writes ``pairs.csv``, ``classes.csv``,
    ``metrics.json`` and ``cases.png`` into ``out``; returns the metrics.

    Under ``torchrun`` / ``accelerate launch`` the pairs are sharded over the processes
    (:func:`~trustmed.grounding.distributed.evaluate_table_distributed`) with the results of one
    process; every process returns the metrics, only the main one writes ``out``."""
    from trustmed.grounding.distributed import evaluate_table_distributed, process_state
    from trustmed.grounding.heatmaps import plot_cases
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.zero_shot import ZeroShotGrounder
    from trustmed.io import write_json
    from trustmed.outdir import is_main_process, staged_dir

    # under torchrun / accelerate launch: join the process group (and pick this process's device)
    # before the model is loaded; the rows are sharded over the processes, results are the same
    process_state()
    ldm = load_ldm(ldm_folder(cfg.model))
    prompt = load_prompt(cfg.prompt_tuning)
    with tempfile.TemporaryDirectory() as work:
        table = load_eval_table(cfg.data, cfg.seed, work)
        grounder = ZeroShotGrounder(ldm, cfg.grounding.model_copy(update={"seed": cfg.seed}), prompt=prompt)
        result = evaluate_table_distributed(
            grounder, table, metrics=METRICS, n_boot=cfg.n_boot, seed=cfg.seed, n_cases=cfg.n_cases
        )
        scores, summary = result.scores, result.summary
        # the main process holds the maps of the cases (the others hold none and write nothing)
        cases = _cases(table, result.case_maps, scores, cfg.n_cases) if is_main_process() else []
    summary.update(
        {
            "dataset": cfg.data.dataset,
            "model": str(ldm_folder(cfg.model)),
            "prompt_tuning": None if cfg.prompt_tuning is None else str(cfg.prompt_tuning),
            "timing": grounder.timing_,
        }
    )
    if not is_main_process():  # every process returns the same summary; only the main one writes --out
        return summary
    with staged_dir(out) as tmp:
        scores.to_csv(tmp / "pairs.csv", index=False)
        _class_rows(summary).to_csv(tmp / "classes.csv", index=False)
        write_json(tmp / "metrics.json", summary)
        plot_cases(cases, tmp / "cases.png", columns=cfg.n_cases)
    return summary


def tune_prompt(cfg: GroundTuneConfig, out: str | Path) -> dict:
    """Learn a prompt for ``cfg.model`` from sentences and anatomy masks (no boxes): writes
    ``prompt.safetensors``, ``prompt.json`` and ``summary.json`` into ``out``; returns the summary."""
    from trustmed.data.mscxr import load_mscxr
    from trustmed.data.synth.cxr import make_synthcxr
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.prompt_tuning import build_examples, train_prompt
    from trustmed.io import write_json
    from trustmed.outdir import staged_dir

    cfg = cfg.model_copy(update={"prompt": cfg.prompt.model_copy(update={"seed": cfg.seed})})
    ldm = load_ldm(ldm_folder(cfg.model))
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
        anatomy = Path(data.anatomy) if data.anatomy else data_root / "anatomy"
        examples = build_examples(ldm, table, anatomy)
    prompt, summary = train_prompt(ldm, examples, cfg.prompt)
    with staged_dir(out) as tmp:
        prompt.save(tmp)
        write_json(tmp / "summary.json", {**summary, "config": cfg.model_dump(mode="json")})
    return summary


def train_ldm(cfg: TrainLDMConfig, out: str | Path) -> dict:
    """Train the tiny text-conditioned LDM (:func:`~trustmed.grounding.train_ldm.train_tiny_ldm`):
    writes ``model/`` and ``summary.json`` into ``out``; returns the summary."""
    from trustmed.grounding.train_ldm import train_tiny_ldm
    from trustmed.io import write_json
    from trustmed.outdir import staged_dir

    if cfg.data_root is not None and not Path(cfg.data_root).is_dir():
        raise InputError(f"data_root {cfg.data_root}: folder not found")
    settings = TinyLDMConfig(**cfg.model_dump(exclude={"data_root"}))
    with staged_dir(out) as tmp:
        summary = train_tiny_ldm(settings, tmp, data_root=cfg.data_root)
        write_json(tmp / "summary.json", summary)
    return summary

"""``trustmed ground``: run, eval, tune, train-ldm, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.grounding.ldm import make_random_monai_ldm

runner = CliRunner()
FAST = ["--set", "grounding.num_steps=5", "--set", "grounding.batch_size=4"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_random_monai_ldm(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "cxr.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)).save(path)
    return path


def test_run_writes_heatmap_and_overlay(tmp_path, model_dir, image_file):
    out = tmp_path / "run"
    args = [
        "ground",
        "run",
        "--model",
        str(model_dir),
        "--image",
        str(image_file),
        "--text",
        "left pleural effusion",
    ]
    result = runner.invoke(app, [*args, "--out", str(out), "--quiet", *FAST])
    assert result.exit_code == 0, result.output
    heat = np.load(out / "heatmap.npy")
    assert heat.shape == (40, 48) and np.isnan(heat).any() and np.nanmax(heat) <= 1
    assert (out / "overlay.png").stat().st_size > 1000
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["grounding"]["num_steps"] == 5
    assert run["config"]["grounding"]["token_set"] == "content"  # without a prompt: the paper's tokens


def test_ground_is_a_group_without_an_action_of_its_own(tmp_path, model_dir, image_file):
    result = runner.invoke(app, ["ground"])
    assert all(name in result.output for name in ("run", "eval", "tune", "train-ldm"))
    out = tmp_path / "run"
    args = ["ground", "--model", str(model_dir), "--image", str(image_file), "--text", "nodule"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2 and "No such option" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--text", "<|endoftext|>"], "only special or unknown tokens"),
        (["--text", " ".join(["nodule"] * 30)], "exceed the tokenizer's maximum"),
        (["--text", "nodule", "--image", "missing.png"], "not found"),
    ],
)
def test_bad_input_exit_2_and_nothing_written(tmp_path, model_dir, image_file, extra, message):
    out = tmp_path / "run"
    args = ["ground", "run", "--model", str(model_dir), "--image", str(image_file), *extra]
    result = runner.invoke(app, [*args, "--out", str(out), "--quiet", *FAST])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()


def test_model_missing_a_component(tmp_path, image_file, model_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "text_encoder")
    args = ["ground", "run", "--model", str(broken), "--image", str(image_file), "--text", "nodule"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2 and "text_encoder" in result.output
    assert not (tmp_path / "o").exists()


def test_eval_on_synthcxr_writes_tables_and_figure(tmp_path, model_dir):
    out = tmp_path / "eval"
    args = [
        "ground",
        "eval",
        "--model",
        str(model_dir),
        "--dataset",
        "synthcxr",
        "--out",
        str(out),
        "--quiet",
    ]
    sets = ["--set", "data.n_images=12", "--set", "n_boot=200", "--set", "n_cases=2", *FAST]
    result = runner.invoke(app, [*args, *sets])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "grounding" and metrics["n_pairs"] >= 3
    assert set(metrics["overall"]) == {"cnr", "miou", "auroc", "pointing_game"}
    assert "ci" in metrics["overall"]["auroc"]
    assert (out / "classes.csv").is_file() and (out / "cases.png").is_file()


def test_train_ldm_tiny_run(tmp_path):
    out = tmp_path / "ldm"
    sets = ["n_images=12", "ae_epochs=1", "unet_epochs=1", "unet_channels=[16,32]", "ae_channels=[8,8,8]"]
    sets.append("unet_attention_levels=[true,true]")
    args = ["ground", "train-ldm", "--out", str(out), "--quiet"] + [x for s in sets for x in ("--set", s)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] >= 3 and (out / "model" / "configs" / "inference.json").is_file()
    bad = runner.invoke(app, ["ground", "train-ldm", "--out", str(tmp_path / "x"), "--set", "unet_epoch=1"])
    assert bad.exit_code == 2 and "did you mean" in bad.output
    config = json.loads((out / "model" / "configs" / "inference.json").read_text())
    assert config["network_def"]["attention_levels"] == [True, True]
    assert config["network_def"]["num_head_channels"] == [16, 32]
    wrong = ["--set", "unet_attention_levels=[true]"]
    bad = runner.invoke(app, ["ground", "train-ldm", "--out", str(tmp_path / "y"), *wrong])
    assert bad.exit_code == 2 and "unet_attention_levels" in bad.output and not (tmp_path / "y").exists()


@pytest.fixture(scope="module")
def tune_data(tmp_path_factory):
    from trustmed.data.synth.cxr import make_synthcxr

    root = tmp_path_factory.mktemp("tune")
    make_synthcxr(root, n_images=16, image_size=48, seed=4)
    return root


def test_tune_then_apply_the_prompt(tmp_path, model_dir, image_file, tune_data):
    out = tmp_path / "prompt"
    args = [
        "ground",
        "tune",
        "--model",
        str(model_dir),
        "--root",
        str(tune_data),
        "--out",
        str(out),
        "--quiet",
    ]
    result = runner.invoke(app, [*args, "--lora", "--set", "prompt.epochs=1", "--set", "prompt.batch_size=4"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "prompt.json").read_text())
    assert meta["n_ctx"] == 4 and meta["lora"]["targets"] == ["to_k", "to_v"]
    # --lora brings the measured recipe; the --set options given after it still apply
    assert meta["config"]["align_loss"] == "soft_iou" and meta["depth"] == 1 and meta["config"]["epochs"] == 1
    assert meta["counts"]["with_location"] > 0 and "right" in meta["vocabulary"]["sides"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cpu_time_s"] > 0 and summary["history"]
    ground = [
        "ground",
        "run",
        "--model",
        str(model_dir),
        "--image",
        str(image_file),
        "--text",
        "left pleural effusion",
    ]
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [*ground, "--prompt-tuning", str(out / "prompt.safetensors"), "--out", str(run), "--quiet", *FAST],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["prompt_tuning"].endswith("prompt.safetensors")
    # a different base model is refused: exit 2, nothing written
    other = make_random_monai_ldm(tmp_path / "other", seed=5)
    bad_run = tmp_path / "bad"
    ground[3] = str(other)
    result = runner.invoke(
        app, [*ground, "--prompt-tuning", str(out), "--out", str(bad_run), "--quiet", *FAST]
    )
    assert result.exit_code == 2 and "refusing to apply" in result.output
    assert not bad_run.exists()
    # grounding settings other than the prompt was trained for are refused, naming both values
    ground[3] = str(model_dir)
    band = ["--set", "grounding.band=[0.2,0.4]"]
    result = runner.invoke(app, [*ground, "--prompt-tuning", str(out), "--out", str(bad_run), *band, *FAST])
    assert result.exit_code == 2 and "band=[0.4, 0.6]" in result.output and "band=[0.2, 0.4]" in result.output
    assert not bad_run.exists()


def test_tune_lora_recipe_is_under_the_config_file(tmp_path, model_dir, tune_data):
    config = tmp_path / "tune.yaml"
    config.write_text("prompt:\n  n_ctx: 3\n  epochs: 1\n  batch_size: 4\n")
    out = tmp_path / "prompt"
    args = ["ground", "tune", "--model", str(model_dir), "--root", str(tune_data), "--config", str(config)]
    result = runner.invoke(app, [*args, "--lora", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "prompt.json").read_text())
    assert meta["n_ctx"] == 3 and meta["config"]["lr"] == 0.01 and meta["lora"] is not None
    assert (meta["token_set"], meta["layers"], meta["band"]) == ("end_and_padding", "bottleneck", [0.4, 0.6])
    result = runner.invoke(app, [*args, "--no-lora", "--out", str(tmp_path / "plain"), "--quiet"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "plain" / "prompt.json").read_text())
    assert meta["lora"] is None and meta["config"]["lr"] == 0.03


def test_tune_bad_input_exit_2(tmp_path, model_dir, tune_data):
    import shutil

    bad_root = tmp_path / "data"
    shutil.copytree(tune_data, bad_root)
    first = sorted((bad_root / "anatomy").glob("*.npz"))[0]
    np.savez_compressed(first, right_upper=np.ones((5, 5), bool))
    out = tmp_path / "p"
    args = [
        "ground",
        "tune",
        "--model",
        str(model_dir),
        "--root",
        str(bad_root),
        "--out",
        str(out),
        "--quiet",
    ]
    result = runner.invoke(app, [*args, "--set", "prompt.epochs=1"])
    assert result.exit_code == 2 and "expected the image's" in result.output
    assert not out.exists()
    result = runner.invoke(app, [*args, "--set", "prompt.n_ctxx=2"])
    assert result.exit_code == 2 and "did you mean" in result.output


def test_eval_bad_dataset_flag_is_named(tmp_path, model_dir):
    out = tmp_path / "eval"
    result = runner.invoke(
        app, ["ground", "eval", "--model", str(model_dir), "--dataset", "chexpert", "--out", str(out)]
    )
    assert result.exit_code == 2 and "--dataset" in result.output
    assert not out.exists()


def test_example_configs_load_and_match_the_defaults():
    from pathlib import Path

    from trustmed.config import load_config
    from trustmed.grounding.pipeline import GroundEvalConfig, GroundTuneConfig

    examples = Path(__file__).resolve().parents[2] / "examples"
    tune = load_config(GroundTuneConfig, examples / "prompt_tuning_synthcxr.yaml")
    assert tune.prompt == GroundTuneConfig().prompt  # the file documents the defaults
    assert load_config(GroundEvalConfig, examples / "ground_synthcxr.yaml").grounding.num_steps == 100

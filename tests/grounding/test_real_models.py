"""Grounding on real models: maps unchanged on CPU fp32, batched inversion equal to one image at a time,
the paper's preset resolved on the chest X-ray LDM's layout, ``ground describe``, the model folder's
recommended token set and the unknown-word warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.data.mscxr import load_mscxr, read_image
from trustmed.data.synth.cxr import make_synthcxr
from trustmed.errors import InputError
from trustmed.grounding.inversion import ddim_invert, ddim_timesteps, to_epsilon_and_x0
from trustmed.grounding.ldm import load_ldm, tiny_ldm_path
from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder, describe, resolve_config

REFERENCE = Path(__file__).resolve().parent.parent / "fixtures" / "grounding_reference.npz"

# the settings the reference maps were computed with, before device/precision/preset support existed
REFERENCE_CONFIGS = {
    "content": GroundingConfig(num_steps=30, token_set="content", batch_size=4),
    "end_and_padding": GroundingConfig(num_steps=30, token_set="end_and_padding", batch_size=4),
    "noising": GroundingConfig(
        mode="noising", noise_levels=[0.3, 0.5], token_set="end_and_padding", batch_size=4
    ),
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthcxr") / "s"
    make_synthcxr(root, n_images=4, seed=11)
    table = load_mscxr(root, split=None)
    return table, [read_image(p) for p in table.path]


@pytest.fixture(scope="module")
def tiny():
    return load_ldm(tiny_ldm_path())


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_cpu_fp32_maps_are_unchanged(pairs, tiny, name):
    """Maps of rows 0 and 2 of a seed-11 SynthCXR table, saved by the code before this change."""
    table, images = pairs
    rows = [0, 2]
    maps = ZeroShotGrounder(tiny, REFERENCE_CONFIGS[name]).ground(
        [images[i] for i in rows], [table.text.iloc[i] for i in rows]
    )
    expected = np.load(REFERENCE)[name]
    np.testing.assert_allclose(np.stack(maps), expected, atol=1e-5, equal_nan=True)


def test_batched_inversion_equals_one_image_at_a_time(pairs, tiny):
    table, images = pairs
    texts = list(table.text)[:4]
    cfg = GroundingConfig(num_steps=40, token_set="end_and_padding")
    batched = ZeroShotGrounder(tiny, cfg.model_copy(update={"batch_size": 4})).ground(images[:4], texts)
    single = ZeroShotGrounder(tiny, cfg.model_copy(update={"batch_size": 1})).ground(images[:4], texts)
    assert len({t for t in texts}) > 1  # each image with its own sentence
    for b, s in zip(batched, single, strict=True):
        np.testing.assert_allclose(b, s, atol=1e-5, equal_nan=True)
        assert np.nanmax(b) > 0


def test_current_alpha_follows_the_papers_reversed_step():
    """v → ε with the current step's ᾱ, then z_next = √ᾱ_t x̂0 + √(1-ᾱ_t) ε̂ (written out here)."""
    torch.manual_seed(0)
    alphas = torch.linspace(0.999, 0.01, 1000)
    timesteps = ddim_timesteps(1000, 300, "trailing_integer")
    z0 = torch.randn(2, 3, 4, 4)
    w = torch.randn(3, 3)

    def predict(z, t, i):  # any deterministic model output
        return torch.einsum("bchw,cd->bdhw", z, w) * (1 + t / 1000)

    ours = ddim_invert(
        predict, z0, alphas, timesteps, "v_prediction", stop_after=50, prediction_alpha="current"
    )
    z, ratio = z0.clone(), 1000 // 300
    for t in timesteps[:50]:
        a_cur = alphas[t - ratio] if t - ratio >= 0 else torch.tensor(1.0)
        a_next = alphas[t]
        v = predict(z, int(t), 0)
        x0 = a_cur.sqrt() * z - (1 - a_cur).sqrt() * v
        eps = a_cur.sqrt() * v + (1 - a_cur).sqrt() * z
        z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    torch.testing.assert_close(ours, z, atol=1e-5, rtol=1e-5)
    target = ddim_invert(predict, z0, alphas, timesteps, "v_prediction", stop_after=50)
    assert (target - ours).abs().max() > 1e-3  # the two conventions differ for v-prediction
    eps_a = ddim_invert(predict, z0, alphas, timesteps, "epsilon", stop_after=50, prediction_alpha="current")
    eps_b = ddim_invert(predict, z0, alphas, timesteps, "epsilon", stop_after=50)
    torch.testing.assert_close(eps_a, eps_b)  # and agree for ε-prediction
    assert to_epsilon_and_x0(torch.ones(1), torch.ones(1), torch.tensor(0.5), "epsilon")[0].item() == 1.0


@pytest.fixture(scope="module")
def cxr_layout():
    from trustmed.grounding.ldm import build_ldm, cxr_ldm_config

    return build_ldm(cxr_ldm_config(width=1 / 32))


def test_mscxr_paper_preset_on_the_cxr_ldm_layout(cxr_layout):
    """The values the paper's code uses on the MONAI chest X-ray LDM (layers 3, 4, 6, 7 of the 16²
    ones; 334 integer-ratio timesteps; steps 120-179 = t 360-537; no text mask; one channel)."""
    info = describe(cxr_layout, GroundingConfig(preset="mscxr_paper"))
    layers = info["layers"]
    assert [e["index"] for e in layers["selected"]] == [3, 4, 6, 7]
    assert all(e["resolution"] == [16, 16] for e in layers["selected"])
    sixteen = [e["index"] for e in layers["available"] if e["resolution"] == [16, 16]]
    assert sixteen == [2, 3, 4, 5, 6, 7]  # "bottleneck" would read all six
    assert info["timesteps"]["count"] == 334
    assert info["timesteps"]["values"][:3] == [0, 3, 6] and info["timesteps"]["values"][-1] == 999
    assert info["band"]["steps"] == [120, 179] and info["band"]["timesteps"] == [360, 537]
    assert info["text_attention_mask"] is False and info["token_set"] == "content"
    assert info["prediction_alpha"] == "current" and info["gaussian"]["border"] == "reflect"
    assert info["gaussian"]["sigma_px"] == pytest.approx(2.5)
    assert info["model"]["image_channels"] == 1 and info["model"]["image_size"] == 512
    # the current defaults stay available: bottleneck = the six 16² layers, fractional trailing steps
    default = describe(cxr_layout, GroundingConfig())
    assert [e["index"] for e in default["layers"]["selected"]] == sixteen
    assert default["timesteps"]["count"] == 300 and default["band"]["timesteps"] == [402, 599]


def test_preset_order_explicit_keys_win(tiny):
    cfg = resolve_config(GroundingConfig(preset="mscxr_paper", gaussian_border="nearest"), tiny)
    assert cfg.gaussian_border == "nearest" and cfg.spacing == "trailing_integer"
    # the model folder recommends end_and_padding; the user's preset wins over it, an explicit key over both
    assert resolve_config(GroundingConfig(), tiny).token_set == "end_and_padding"
    assert resolve_config(GroundingConfig(preset="mscxr_paper"), tiny).token_set == "content"
    assert resolve_config(GroundingConfig(token_set="content"), tiny).token_set == "content"
    assert resolve_config(GroundingConfig(), tiny).text_attention_mask is tiny.text_attention_mask


def test_bad_model_recommendation_is_named(tiny):
    import copy

    bad = copy.copy(tiny)
    bad.recommended = {"token_sets": "content"}
    with pytest.raises(InputError, match=r"token_sets.*trustmed.json: grounding"):
        resolve_config(GroundingConfig(), bad)


def test_layer_index_out_of_range_is_named(tiny, pairs):
    table, images = pairs
    with pytest.raises(InputError, match="index 9 out of range"):
        ZeroShotGrounder(tiny, GroundingConfig(num_steps=5, layers=[0, 9])).ground(
            images[:1], ["cardiomegaly"]
        )


def test_describe_cli_prints_json_for_the_tiny_model():
    result = CliRunner().invoke(app, ["ground", "describe", "--model", "tiny"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["token_set"] == "end_and_padding"  # from the shipped model's trustmed.json
    assert info["layers"]["selected"] and all(e["resolution"] == [8, 8] for e in info["layers"]["selected"])
    assert info["band"]["timesteps"][0] >= 400 and info["band"]["timesteps"][1] < 600
    bad = CliRunner().invoke(app, ["ground", "describe", "--model", "tiny", "--set", "grounding.layers=[99]"])
    assert bad.exit_code == 2 and "out of range" in bad.stderr


def test_unknown_words_are_named_once(tiny, pairs, caplog):
    table, images = pairs
    grounder = ZeroShotGrounder(tiny, GroundingConfig(num_steps=5, token_set="end_and_padding"))
    with caplog.at_level(logging.WARNING, logger="trustmed.grounding.zero_shot"):
        grounder.ground(
            images[:2], ["left pleural effusion with blunting", "left pleural effusion with blunting"]
        )
    messages = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(messages) == 1 and "'blunting'" in messages[0] and "'pleural'" not in messages[0]


@pytest.mark.slow
def test_ground_run_as_documented_matches_ground_eval(tmp_path):
    """The docs' ``ground run --model tiny --image … --text …`` gives the maps ``ground eval`` scores:
    the same pixel AUROC pair by pair, and maps that point at the finding (AUROC well above 0.5)."""
    import pandas as pd

    from trustmed.data.mscxr import boxes_to_mask
    from trustmed.metrics.grounding import pair_metrics

    root = tmp_path / "synthcxr"
    make_synthcxr(root, n_images=12, seed=5)
    steps = "grounding.num_steps=40"
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["ground", "eval", "--set", f"data.root={root}", "--set", "data.limit=3", "--set", steps,
         "--set", "n_boot=0", "--out", str(tmp_path / "eval"), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(tmp_path / "eval" / "pairs.csv")
    table = load_mscxr(root, split="test").head(3)
    ours = []
    for k, row in enumerate(table.itertuples()):
        out = tmp_path / f"run{k}"
        result = runner.invoke(
            app,
            ["ground", "run", "--model", "tiny", "--image", row.path, "--text", row.text, "--set", steps,
             "--out", str(out), "--quiet"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        heat = np.load(out / "heatmap.npy")
        masks = [boxes_to_mask([b], *heat.shape) for b in row.boxes]
        ours.append(pair_metrics(heat, masks)["auroc"])
    np.testing.assert_allclose(ours, scored["auroc"].to_numpy(), atol=1e-6)
    assert np.mean(ours) > 0.7


def test_describe_the_mscxr_example_on_a_bundle_in_the_cxr_layout(cxr_layout, tmp_path):
    """``ground describe --config examples/ground_mscxr_monai.yaml`` on a bundle folder with the chest
    X-ray LDM's layout (small channels, random weights) resolves the paper's layers and band."""
    from trustmed.grounding.ldm import cxr_ldm_config, save_monai_folder

    folder = save_monai_folder(
        tmp_path / "cxr",
        autoencoder=cxr_layout.autoencoder,
        unet=cxr_layout.unet,
        text_encoder=cxr_layout.text_encoder,
        tokenizer=cxr_layout.tokenizer,
        config=cxr_ldm_config(width=1 / 32),
        dtype=torch.float32,
    )
    example = Path(__file__).resolve().parents[2] / "examples" / "ground_mscxr_monai.yaml"
    result = CliRunner().invoke(app, ["ground", "describe", "--config", str(example), "--model", str(folder)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert [e["index"] for e in info["layers"]["selected"]] == [3, 4, 6, 7]
    assert info["band"]["timesteps"] == [360, 537] and info["preset"] == "mscxr_paper"
    assert info["text_attention_mask"] is False and info["batch_size"] == 4

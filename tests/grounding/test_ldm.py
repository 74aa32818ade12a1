"""LDM folders: MONAI bundle round trip, a diffusers folder, missing parts, and the shipped tiny LDM."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from trustmed.errors import InputError
from trustmed.grounding.ldm import (
    build_text_encoder,
    build_tokenizer,
    load_ldm,
    make_random_monai_ldm,
    tiny_ldm_path,
)
from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder


def test_monai_folder_round_trip_and_missing_parts(tmp_path):
    folder = make_random_monai_ldm(tmp_path / "m", seed=3)
    a, b = load_ldm(folder), load_ldm(folder)
    z = torch.randn(1, 3, 8, 8)
    ctx = a.encode_text(a.tokenizer(["left pleural effusion"], return_tensors="pt")["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(
            a.unet_forward(z, torch.tensor([7]), ctx), b.unet_forward(z, torch.tensor([7]), ctx)
        )
    assert a.encode_images(torch.zeros(2, 1, 32, 32)).shape == (2, 3, 16, 16)
    for part, message in (
        ("models/diffusion_model.safetensors", "diffusion_model"),
        ("tokenizer", "tokenizer"),
    ):
        broken = tmp_path / f"broken_{message}"
        shutil.copytree(folder, broken)
        target = broken / part
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        with pytest.raises(InputError, match=message):
            load_ldm(broken)
    with pytest.raises(InputError, match="expected configs/inference.json"):
        load_ldm(tmp_path)
    cfg = json.loads((folder / "configs" / "inference.json").read_text())
    cfg["network_def"]["channels"] = [8, 32]
    bad = tmp_path / "mismatch"
    shutil.copytree(folder, bad)
    (bad / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="do not match"):
        load_ldm(bad)


def test_diffusers_folder_grounds(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 8),
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type="epsilon")
    tok = build_tokenizer(["nodule", "left", "right", "upper", "zone"], max_length=12)
    text = build_text_encoder(tok, hidden_size=16, layers=1)
    for name, part in (
        ("unet", unet),
        ("vae", vae),
        ("scheduler", sched),
        ("text_encoder", text),
        ("tokenizer", tok),
    ):
        part.save_pretrained(tmp_path / name)
    ldm = load_ldm(tmp_path)
    assert (ldm.family, ldm.image_size, ldm.image_channels, ldm.value_range) == (
        "diffusers",
        16,
        3,
        (-1.0, 1.0),
    )
    heat = ZeroShotGrounder(ldm, GroundingConfig(num_steps=5)).ground(
        [np.random.default_rng(0).random((20, 16)).astype(np.float32)], ["nodule left upper zone"]
    )[0]
    assert heat.shape == (20, 16) and np.isnan(heat).any() and np.nanmax(heat) == pytest.approx(1.0, abs=1e-5)
    shutil.rmtree(tmp_path / "vae")
    with pytest.raises(InputError, match="vae"):
        load_ldm(tmp_path)


def test_shipped_tiny_ldm_is_small_documented_and_grounds_findings():
    from trustmed.data.mscxr import boxes_to_mask
    from trustmed.data.synth.cxr import generate_case
    from trustmed.metrics.grounding import auroc

    folder = tiny_ldm_path()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 5 * 2**20
    cfg = json.loads((folder / "configs" / "inference.json").read_text())
    assert cfg["training"]["seed"] == 0 and (folder / "README.md").is_file()
    ldm = load_ldm(folder)
    rng = np.random.default_rng(123)
    images, phrases, masks = [], [], []
    while len(images) < 12:
        case = generate_case(rng, image_size=128)
        f = case.findings[0]
        images.append(case.image)
        phrases.append(f.sentence)
        masks.append(boxes_to_mask([f.box], 128, 128))
    # the tiny LDM routes the sentence through the end/padding tokens (chosen on validation data)
    cfg = GroundingConfig(mode="noising", noise_levels=[0.3], batch_size=12, token_set="end_and_padding")
    heat = ZeroShotGrounder(ldm, cfg).ground(images, phrases)
    assert np.mean([auroc(h, m) for h, m in zip(heat, masks, strict=True)]) > 0.65  # chance: 0.5


def test_training_captions_whole_report_or_one_sentence():
    from trustmed.grounding.train_ldm import _captions

    reports = [["left apical pneumothorax", "right pleural effusion"], ["right upper zone nodule"]]
    rng = np.random.default_rng(0)
    whole = [_captions(rng, reports, 0.0) for _ in range(20)]
    assert {c[0] for c in whole} == {
        "left apical pneumothorax . right pleural effusion",
        "right pleural effusion . left apical pneumothorax",
    }
    one = [_captions(rng, reports, 0.0, one=True) for _ in range(40)]
    assert {c[0] for c in one} == set(reports[0]) and {c[1] for c in one} == set(reports[1])
    dropped = _captions(np.random.default_rng(1), reports * 200, 0.1, one=True)
    assert 0.05 < np.mean([c == "" for c in dropped]) < 0.15

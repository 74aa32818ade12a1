"""LDM folders beyond the round trip: MONAI bundle configs read with ConfigParser (nothing evaluated),
model metadata (trustmed.json), diffusers / RoentGen-style folders, and the chest X-ray LDM layout."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from trustmed.errors import InputError
from trustmed.grounding.attention import cross_attention_layers
from trustmed.grounding.ldm import (
    _clean_def,
    build_ldm,
    build_monai_networks,
    build_text_encoder,
    build_tokenizer,
    cxr_ldm_config,
    load_ldm,
    make_alphas_cumprod,
    make_random_diffusers_ldm,
    make_random_monai_ldm,
    save_monai_folder,
    tiny_ldm_path,
)

WORDS = ["left", "right", "pleural", "effusion", "nodule", "upper", "zone"]


def _bundle_config(marker: str) -> dict:
    """The shape of the MONAI model-zoo chest X-ray LDM's inference.json, with tiny channel counts.

    Every ``$`` expression and ``_target_`` that is not a network would create ``marker`` (or fail)
    if it were evaluated or instantiated.
    """
    touch = f"$__import__('pathlib').Path('{marker}').write_text('evaluated')"
    return {
        "imports": [
            "$import torch",
            "$from datetime import datetime",
            "$from transformers import CLIPTokenizer",
        ],
        "bundle_root": "/nonexistent/cxr_image_synthesis_latent_diffusion_model",
        "model_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/output'",
        "create_output_dir": touch,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "tokenizer": "$CLIPTokenizer.from_pretrained('stabilityai/stable-diffusion-2-1-base', subfolder='t')",
        "context_dim": 16,
        "latent_channels": 3,
        "autoencoder_def": {
            "_target_": "generative.networks.nets.AutoencoderKL",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "latent_channels": "@latent_channels",
            "num_channels": [4, 8, 8, 8],
            "num_res_blocks": 2,
            "norm_num_groups": 4,
            "norm_eps": 1e-06,
            "attention_levels": [False, False, False, False],
            "with_encoder_nonlocal_attn": True,
            "with_decoder_nonlocal_attn": True,
        },
        "load_autoencoder_path": "$@model_dir + '/autoencoder.pth'",
        "load_autoencoder": "$@autoencoder_def.load_state_dict(torch.load(@load_autoencoder_path))",
        "autoencoder": "$@autoencoder_def.to(@device)",
        "diffusion_def": {
            "_target_": "generative.networks.nets.DiffusionModelUNet",
            "spatial_dims": 2,
            "in_channels": "%autoencoder_def#latent_channels",
            "out_channels": "%autoencoder_def#latent_channels",
            "num_channels": [8, 16, 24],
            "num_res_blocks": 2,
            "attention_levels": [False, True, True],
            "norm_num_groups": 4,
            "norm_eps": 1e-06,
            "resblock_updown": False,
            "num_head_channels": [0, 16, 24],
            "with_conditioning": True,
            "transformer_num_layers": 1,
            "cross_attention_dim": "@context_dim",
        },
        "load_diffusion": touch,
        "diffusion": "$@diffusion_def.to(@device)",
        "side_effect": {"_target_": "builtins.open", "file": marker, "mode": "w"},
        "scheduler": {
            "_target_": "generative.networks.schedulers.DDIMScheduler",
            "_requires_": ["@load_diffusion", "@side_effect"],
            "beta_start": 0.0015,
            "beta_end": 0.0205,
            "num_train_timesteps": 1000,
            "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction",
            "clip_sample": False,
        },
        "noise_scheduler": "$@scheduler.set_timesteps(50)",
        "prompt": "Big right-sided pleural effusion",
        "run": ["$@create_output_dir", "$@load_diffusion"],
    }


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle-shaped folder: ``.pth`` weights (plain tensors), a text encoder and a tokenizer."""
    folder = tmp_path_factory.mktemp("bundle")
    marker = folder / "expression_was_evaluated.txt"
    cfg = _bundle_config(str(marker))
    (folder / "configs").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(cfg, indent=2))
    ae_kwargs = {**cfg["autoencoder_def"], "latent_channels": 3}
    unet_kwargs = {**cfg["diffusion_def"], "in_channels": 3, "out_channels": 3, "cross_attention_dim": 16}
    torch.manual_seed(11)
    ae, unet = build_monai_networks(_clean_def(ae_kwargs), _clean_def(unet_kwargs))
    (folder / "models").mkdir()
    states = {}
    for name, module in (("autoencoder", ae), ("diffusion_model", unet)):
        states[name] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        torch.save(states[name], folder / "models" / f"{name}.pth")
    tok = build_tokenizer(WORDS, max_length=12)
    build_text_encoder(tok, hidden_size=16, layers=1, seed=1).save_pretrained(folder / "text_encoder")
    tok.save_pretrained(folder / "tokenizer")
    return folder, marker, states


def _variant(bundle, tmp_path, edit, name: str = "variant"):
    """A copy of the bundle folder with ``edit`` applied to its inference.json."""
    folder, _, _ = bundle
    out = tmp_path / name
    shutil.copytree(folder, out)
    cfg = json.loads((out / "configs" / "inference.json").read_text())
    edit(cfg)
    (out / "configs" / "inference.json").write_text(json.dumps(cfg))
    return out


def test_bundle_config_loads_resolving_references_without_running_expressions(bundle):
    from monai.bundle import ConfigParser

    folder, marker, states = bundle
    ldm = load_ldm(folder)
    assert not marker.exists()
    assert (ldm.family, ldm.image_size, ldm.latent_scale, ldm.image_channels) == ("monai", 512, 0.3, 1)
    assert ldm.prediction_type == "v_prediction" and ldm.text_attention_mask is False
    assert ldm.recommended == {}
    # beta_schedule "scaled_linear" is the scaled-linear schedule, not the linear one
    torch.testing.assert_close(
        ldm.alphas_cumprod, make_alphas_cumprod(1000, 0.0015, 0.0205, "scaled_linear_beta")
    )
    assert not torch.allclose(ldm.alphas_cumprod, make_alphas_cumprod(1000, 0.0015, 0.0205, "linear_beta"))
    # the weights are the ones saved, in networks built from the resolved definitions
    for module, name in ((ldm.autoencoder, "autoencoder"), (ldm.unet, "diffusion_model")):
        loaded = module.state_dict()
        assert loaded.keys() == states[name].keys()
        assert all(torch.equal(loaded[k], v) for k, v in states[name].items())
    attn2 = [m for n, m in ldm.unet.named_modules() if n.endswith("attn2")]
    assert len(attn2) == 11 and all(m.to_k.in_features == 16 for m in attn2)  # "@context_dim"
    ids = ldm.tokenizer(["right pleural effusion"], return_tensors="pt", padding="max_length")["input_ids"]
    with torch.no_grad():
        out = ldm.unet_forward(torch.zeros(1, 3, 8, 8), torch.tensor([5]), ldm.encode_text(ids))
    assert out.shape == (1, 3, 8, 8)  # in/out channels from the "%autoencoder_def#latent_channels" macro
    # control: the marker expressions are live, so evaluating them would have been noticed
    ConfigParser(json.loads((folder / "configs" / "inference.json").read_text())).get_parsed_content(
        "load_diffusion"
    )
    assert marker.read_text() == "evaluated"
    marker.unlink()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["diffusion_def"].update({"_target_": "monai.networks.nets.UNet"}),
            r"inference\.json: key 'diffusion_def': _target_ 'monai.networks.nets.UNet' is not supported",
        ),
        (
            lambda c: c["autoencoder_def"].update({"_target_": "generative.networks.nets.VQVAE"}),
            r"key 'autoencoder_def': _target_ 'generative.networks.nets.VQVAE'",
        ),
        (
            lambda c: c.update({"image_size": "$@latent_size * 8", "latent_size": 64}),
            r"inference\.json: key 'image_size' is an expression .*not evaluated: write the value",
        ),
        (
            lambda c: c.update({"context_dim": "$16"}),
            r"key 'diffusion_def::cross_attention_dim' is an expression .*expressions are not evaluated",
        ),
        (
            lambda c: c["scheduler"].update({"num_train_timesteps": "$1000"}),
            r"key 'scheduler::num_train_timesteps' is an expression",
        ),
        (
            lambda c: c["diffusion_def"].update({"cross_attention_dim": "@nowhere"}),
            r"inference\.json: key 'diffusion_def::cross_attention_dim': .*nowhere",
        ),
        (
            lambda c: c["diffusion_def"].update({"num_res_blocks": "%other_bundle.json#num_res_blocks"}),
            r"key 'diffusion_def::num_res_blocks': macro .* reads another file",
        ),
        (
            lambda c: c["diffusion_def"].update({"not_an_argument": 1}),
            r"network definition: .*not_an_argument",
        ),
        (
            lambda c: c.update({"network_def": copy.deepcopy(c["diffusion_def"])}),
            r"'network_def' and 'diffusion_def' both given",
        ),
        (
            lambda c: c["scheduler"].update({"beta_schedule": "cosine"}),
            r"key 'scheduler::schedule' = 'cosine'",
        ),
        (
            lambda c: c["scheduler"].update({"prediction_type": "sample"}),
            r"key 'scheduler::prediction_type' = 'sample'",
        ),
    ],
    ids=[
        "unet-target",
        "autoencoder-target",
        "image-size-expression",
        "reference-to-expression",
        "scheduler-expression",
        "missing-reference",
        "file-macro",
        "unknown-kwarg",
        "two-unets",
        "schedule-name",
        "prediction-type",
    ],
)
def test_bundle_config_refusals_name_the_key(bundle, tmp_path, edit, message):
    folder = _variant(bundle, tmp_path, edit)
    with pytest.raises(InputError, match=message):
        load_ldm(folder)
    assert not bundle[1].exists()


def test_bundle_scheduler_names(bundle, tmp_path):
    linear = load_ldm(
        _variant(bundle, tmp_path, lambda c: c["scheduler"].update({"beta_schedule": "linear"}))
    )
    torch.testing.assert_close(
        linear.alphas_cumprod, make_alphas_cumprod(1000, 0.0015, 0.0205, "linear_beta")
    )

    def monai_names(c):
        del c["scheduler"]["beta_schedule"]
        c["scheduler"].update(
            {"schedule": "linear_beta", "num_train_timesteps": 500, "prediction_type": "epsilon"}
        )

    ldm = load_ldm(_variant(bundle, tmp_path, monai_names, "monai_names"))
    torch.testing.assert_close(ldm.alphas_cumprod, make_alphas_cumprod(500, 0.0015, 0.0205, "linear_beta"))
    assert ldm.prediction_type == "epsilon"
    both = _variant(bundle, tmp_path, lambda c: c["scheduler"].update({"schedule": "linear_beta"}), "both")
    with pytest.raises(InputError, match="both schedule and beta_schedule"):
        load_ldm(both)


def test_text_attention_mask_default_and_explicit_values(bundle, tmp_path):
    assert load_ldm(bundle[0]).text_attention_mask is False
    assert load_ldm(
        _variant(bundle, tmp_path, lambda c: c.update({"text_attention_mask": True}))
    ).text_attention_mask
    tiny_cfg = json.loads((tiny_ldm_path() / "configs" / "inference.json").read_text())
    assert tiny_cfg["text_attention_mask"] is True  # trained with the mask (the old default)
    assert load_ldm(tiny_ldm_path()).text_attention_mask is True
    assert load_ldm(make_random_monai_ldm(tmp_path / "random")).text_attention_mask is True
    with pytest.raises(InputError, match="key 'text_attention_mask' = 'yes'"):
        load_ldm(_variant(bundle, tmp_path, lambda c: c.update({"text_attention_mask": "yes"}), "bad_mask"))


def test_trustmed_json_recommendations(tmp_path):
    tiny = load_ldm(tiny_ldm_path())
    assert tiny.recommended == {"token_set": "end_and_padding"}
    folder = make_random_monai_ldm(tmp_path / "m")
    assert load_ldm(folder).recommended == {}
    meta = folder / "trustmed.json"
    settings = {"token_set": "content", "layers": "all", "band": [0.3, 0.7], "preset": "paper"}
    meta.write_text(json.dumps({"grounding": settings, "notes": "chosen on validation data"}))
    assert load_ldm(folder).recommended == settings
    meta.write_text(json.dumps({"notes": "no settings"}))
    assert load_ldm(folder).recommended == {}
    for content, message in (
        ({"grounding": {}, "groundng": {"layers": "all"}}, r"trustmed\.json: unknown key 'groundng'"),
        ({"grounding": ["layers", "all"]}, r"trustmed\.json: key 'grounding' must be an object"),
        ({"notes": 3}, r"trustmed\.json: key 'notes' must be text"),
        (["grounding"], r"trustmed\.json: expected a JSON object"),
    ):
        meta.write_text(json.dumps(content))
        with pytest.raises(InputError, match=message):
            load_ldm(folder)
    meta.write_text('{"grounding": {')
    with pytest.raises(InputError, match=r"trustmed\.json: not valid JSON"):
        load_ldm(folder)


def test_random_diffusers_folder_loads_and_grounds_end_to_end(tmp_path):
    pytest.importorskip("diffusers")
    from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder

    folder = make_random_diffusers_ldm(tmp_path / "roentgen_like", seed=2)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 2**20 and not list(folder.rglob("*.bin"))
    assert json.loads((folder / "model_index.json").read_text())["unet"] == [
        "diffusers",
        "UNet2DConditionModel",
    ]
    (folder / "trustmed.json").write_text(json.dumps({"grounding": {"layers": "all"}}))
    ldm = load_ldm(folder)
    assert (ldm.family, ldm.image_size, ldm.image_channels, ldm.value_range) == (
        "diffusers",
        16,
        3,
        (-1.0, 1.0),
    )
    assert (ldm.prediction_type, ldm.text_attention_mask, ldm.recommended) == (
        "epsilon",
        False,
        {"layers": "all"},
    )
    torch.testing.assert_close(ldm.alphas_cumprod, make_alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear"))
    assert len(cross_attention_layers(ldm.unet)) == 7
    rng = np.random.default_rng(0)
    images = [rng.random((40, 32)).astype(np.float32), rng.random((3, 24, 24)).astype(np.float32)]
    cfg = GroundingConfig(num_steps=10, layers="all", batch_size=2)
    heat = ZeroShotGrounder(ldm, cfg).ground(images, ["left pleural effusion", "right nodule"])
    assert [h.shape for h in heat] == [(40, 32), (24, 24)]
    # the first image is resized to 20x16 and centre-cropped to 16x16: rows 4..35 are the field of view
    assert np.isfinite(heat[0][4:36]).all() and np.isnan(heat[0][:4]).all() and np.isnan(heat[0][36:]).all()
    assert np.isfinite(heat[1]).all() and heat[1].min() >= 0 and heat[1].max() <= 1
    other = load_ldm(
        make_random_diffusers_ldm(tmp_path / "v", image_channels=1, prediction_type="v_prediction")
    )
    assert (other.image_channels, other.prediction_type) == (1, "v_prediction")


def test_diffusers_folder_missing_vae_or_damaged_unet_config(tmp_path):
    pytest.importorskip("diffusers")
    folder = make_random_diffusers_ldm(tmp_path / "d")
    broken = tmp_path / "no_vae"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(InputError, match=r"no_vae/vae: folder not found .*missing its vae"):
        load_ldm(broken)
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    (damaged / "unet" / "config.json").write_text('{"sample_size": 8, "block_out')
    with pytest.raises(InputError, match=r"damaged/unet/config\.json: not valid JSON"):
        load_ldm(damaged)
    (damaged / "unet" / "config.json").unlink()
    with pytest.raises(InputError, match=r"unet's configuration not found: .*damaged/unet/config\.json"):
        load_ldm(damaged)


def test_cxr_ldm_layout_built_small_and_shared_with_the_folder_loader(tmp_path):
    full = cxr_ldm_config()
    assert full["autoencoder_def"]["channels"] == [64, 128, 128, 128]
    assert full["autoencoder_def"]["norm_num_groups"] == full["network_def"]["norm_num_groups"] == 32
    assert full["network_def"]["channels"] == [256, 512, 768]
    assert full["network_def"]["num_head_channels"] == [0, 512, 768]
    assert full["network_def"]["cross_attention_dim"] == 1024 and full["text_attention_mask"] is False
    assert (full["scale_factor"], full["image_size"], full["scheduler"]["prediction_type"]) == (
        0.3,
        512,
        "v_prediction",
    )
    small = cxr_ldm_config(width=1 / 32)
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    ldm = build_ldm(small)
    assert torch.equal(torch.rand(3), before)  # the global random state is left alone
    assert (ldm.image_size, ldm.image_channels, ldm.text_attention_mask, ldm.latent_scale) == (
        512,
        1,
        False,
        0.3,
    )
    names = cross_attention_layers(ldm.unet)
    # attention at the two deeper levels: 2 + 2 down, 1 in the middle, 3 + 3 up
    assert len(names) == 11 and sum(n.startswith("up_blocks") for n in names) == 6
    assert ldm.text_encoder.config.hidden_size == 32 and ldm.tokenizer.model_max_length == 77
    ids = ldm.tokenizer(["left pleural effusion"], return_tensors="pt", padding="max_length")["input_ids"]
    with torch.no_grad():
        ctx = ldm.encode_text(ids)
        out = ldm.unet_forward(torch.zeros(1, 3, 64, 64), torch.tensor([10]), ctx)
        assert ldm.encode_images(torch.zeros(1, 1, 64, 64)).shape == (1, 3, 8, 8)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    again, other = build_ldm(small), build_ldm(small, seed=1)
    w = next(iter(ldm.unet.state_dict()))
    assert torch.equal(again.unet.state_dict()[w], ldm.unet.state_dict()[w])
    assert not torch.equal(other.unet.state_dict()[w], ldm.unet.state_dict()[w])
    # saved and read back through the folder loader: the same networks
    folder = save_monai_folder(
        tmp_path / "cxr",
        autoencoder=ldm.autoencoder,
        unet=ldm.unet,
        text_encoder=ldm.text_encoder,
        tokenizer=ldm.tokenizer,
        config=small,
        dtype=torch.float32,
    )
    loaded = load_ldm(folder)
    for mine, theirs in ((ldm.unet, loaded.unet), (ldm.autoencoder, loaded.autoencoder)):
        state = theirs.state_dict()
        assert all(torch.equal(state[k], v) for k, v in mine.state_dict().items())
    assert (loaded.image_size, loaded.text_attention_mask, loaded.latent_scale) == (512, False, 0.3)
    with pytest.raises(InputError, match="hidden size 16 differs from the UNet's cross_attention_dim 32"):
        tok = build_tokenizer(WORDS)
        build_ldm(small, tokenizer=tok, text_encoder=build_text_encoder(tok, hidden_size=16, layers=1))
    with pytest.raises(InputError, match=r"model config: key 'image_size' is an expression"):
        build_ldm({**small, "image_size": "$512"})

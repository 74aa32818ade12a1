"""Where grounding runs (``trustmed.grounding.device``): device names, precisions, placing the frozen
LDM, half-precision prompt tuning on a CPU, and CPU float32 training pinned to its results from
before devices were chosen."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch

from trustmed.errors import InputError
from trustmed.grounding.device import (
    accelerator_on,
    is_placed,
    mixed_precision,
    place,
    resolve_device,
    torch_dtype,
)
from trustmed.grounding.ldm import load_ldm, make_random_monai_ldm
from trustmed.grounding.prompt_tuning import (
    LoraPromptTuningConfig,
    PromptExamples,
    PromptTuningConfig,
    ldm_fingerprint,
    train_prompt,
)
from trustmed.grounding.train_ldm import TinyLDMConfig

SENTENCES = [
    "small nodule in the right upper zone",
    "left pleural effusion",
    "cardiomegaly",
    "right lower zone consolidation",
    "left upper zone opacity",
    "the heart is enlarged",
]
FAST = dict(epochs=2, batch_size=4, val_fraction=0.25, lr=0.05, n_ctx=4)


def _random_ldm(folder):
    ldm = load_ldm(make_random_monai_ldm(folder))
    ldm.text_attention_mask = True  # as the pinned runs read it, whatever the folder's default
    return ldm


@pytest.fixture(scope="module")
def ldm(tmp_path_factory):
    return _random_ldm(tmp_path_factory.mktemp("ldm"))


def _examples(ldm, n_images: int = 6, per_image: int = 2, seed: int = 0) -> PromptExamples:
    """Seeded latents, the sentences above and a square anatomy mask per located sentence."""
    side = ldm.image_size // 2  # the random test LDM's latents are half the image size
    z = torch.randn(n_images, 3, side, side, generator=torch.Generator().manual_seed(seed))
    s = ldm.image_size
    latents, sentences, masks, has, image_ids = [], [], [], [], []
    for i in range(n_images):
        for j in range(per_image):
            k = (i * per_image + j) % len(SENTENCES)
            m = torch.zeros(s, s)
            if k != 5:
                r0, c0 = (k * 5) % (s // 2), (k * 7) % (s // 2)
                m[r0 : r0 + s // 2, c0 : c0 + s // 2] = 1
            latents.append(z[i])
            sentences.append(SENTENCES[k])
            masks.append(m)
            has.append(k != 5)
            image_ids.append(f"im{i}")
    counts = {"pairs": len(sentences)}
    return PromptExamples(
        torch.stack(latents), sentences, torch.stack(masks), torch.tensor(has), image_ids, counts
    )


def _digest(prompt) -> str:
    """SHA-256 of the tuned prompt's tensors (context vectors, offsets, LoRA weights), by name."""
    tensors = {
        "ctx": prompt.ctx,
        "deep_ctx": prompt.deep_ctx,
        "out_ctx": prompt.out_ctx,
        **{f"lora.{k}": v for k, v in prompt.lora_state.items()},
    }
    h = hashlib.sha256()
    for name in sorted(tensors):
        if tensors[name] is not None:
            h.update(name.encode())
            h.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# Computed with the trainer as it was before the device and precision settings existed (it forced
# the CPU), on the cases built here (random test LDM, seed 0; ``_examples``; ``FAST``), then checked
# again after: the same tensors, bit for bit (torch.equal), and the same loss history.
PINNED = {
    "default": ("b3187e053f3c9979b4acb94d82b3d9a384c154d43d1a7db08542c568316fe353", PromptTuningConfig),
    "lora": ("12cdb884f1cf39d791c20fd269e6b953a550eb141e46da9f33badcf991de493e", LoraPromptTuningConfig),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_cpu_float32_prompt_tuning_is_unchanged(ldm, case):
    expected, config = PINNED[case]
    # the lora digest was pinned with token noise 0.5, the LoRA recipe's default at the time
    extra = {"lora_rank": 2, "token_noise": 0.5} if case == "lora" else {}
    cfg = config(**FAST, **extra, device="cpu", precision="fp32")
    prompt, _ = train_prompt(ldm, _examples(ldm), cfg)
    assert _digest(prompt) == expected


def test_device_names_and_precisions():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="device cuda: no CUDA device is available"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda").type == "cuda"
    with pytest.raises(InputError, match="expected auto, cpu or cuda"):
        resolve_device("gpu")
    assert [torch_dtype(p) for p in ("fp32", "fp16", "bf16")] == [
        torch.float32,
        torch.float16,
        torch.bfloat16,
    ]
    assert [mixed_precision(p) for p in ("fp32", "fp16", "bf16")] == ["no", "fp16", "bf16"]
    with pytest.raises(InputError, match="precision 'half'"):
        torch_dtype("half")
    assert accelerator_on(torch.device("cpu")).device.type == "cpu"


def test_config_defaults():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from _lib.contrastive import ContrastiveConfig

    for cfg in (PromptTuningConfig(), LoraPromptTuningConfig(), TinyLDMConfig(), ContrastiveConfig()):
        assert (cfg.device, cfg.precision) == ("auto", "fp32"), type(cfg).__name__
    with pytest.raises(ValueError, match="precision"):
        PromptTuningConfig(precision="fp64")
    with pytest.raises(ValueError, match="device"):
        TinyLDMConfig(device="tpu")


def test_place_casts_the_frozen_networks(tmp_path):
    model = _random_ldm(tmp_path)
    fingerprint = ldm_fingerprint(_random_ldm(tmp_path / "again"))
    assert place(model, "cpu", "fp32") is model and model.dtype == torch.float32  # nothing to do
    with pytest.raises(InputError, match="fp16 on a CPU.*bf16 or fp32"):
        place(model, "cpu", "fp16")
    assert model.dtype == torch.float32  # refused before anything moved
    place(model, "cpu", "bf16")
    for part in (model.unet, model.autoencoder, model.text_encoder):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    assert model.alphas_cumprod.dtype == torch.float32 and is_placed(
        model, torch.device("cpu"), torch.bfloat16
    )
    # the fingerprint of the weights as loaded: a prompt tuned on the float32 model still applies
    assert ldm_fingerprint(model) == fingerprint
    ids = model.tokenizer(["left pleural effusion"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        context = model.encode_text(ids)
        z = model.encode_images(torch.rand(1, 1, 32, 32, dtype=torch.bfloat16))
        pred = model.unet_forward(z, torch.tensor([500]), context)
    assert context.dtype == pred.dtype == torch.bfloat16 and bool(torch.isfinite(pred).all())
    # prompt tuning on a model already placed: no copies, and the LoRA weights are still float32
    cfg = LoraPromptTuningConfig(**{**FAST, "epochs": 1}, lora_rank=2, device="cpu", precision="bf16")
    prompt, _ = train_prompt(model, _examples(model), cfg)
    assert prompt.lora_state and all(v.dtype == torch.float32 for v in prompt.lora_state.values())
    assert prompt.meta["base_fingerprint"] == fingerprint and model.dtype == torch.bfloat16


def test_bf16_prompt_tuning_on_a_cpu_trains_float32_vectors(ldm):
    before = {k: v.clone() for k, v in ldm.unet.state_dict().items()}
    cfg = LoraPromptTuningConfig(**FAST, lora_rank=2, device="cpu", precision="bf16")
    prompt, summary = train_prompt(ldm, _examples(ldm), cfg)
    assert all(torch.isfinite(torch.tensor(v)) for row in summary["history"] for v in row.values())
    assert prompt.ctx.dtype == torch.float32 and prompt.ctx.device.type == "cpu"
    assert prompt.lora_state and all(v.dtype == torch.float32 for v in prompt.lora_state.values())
    assert any(float(v.abs().sum()) > 0 for k, v in prompt.lora_state.items() if "lora_B" in k)
    # the caller's model is neither moved nor cast
    assert ldm.dtype == torch.float32
    assert all(torch.equal(v, ldm.unet.state_dict()[k]) for k, v in before.items())
    assert prompt.meta["config"]["precision"] == "bf16"
    with pytest.raises(InputError, match="fp16 on a CPU"):
        train_prompt(ldm, _examples(ldm), cfg.model_copy(update={"precision": "fp16"}))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            train_prompt(ldm, _examples(ldm), cfg.model_copy(update={"device": "cuda"}))

"""Prompt tuning: context slots, gradients through the captured attention, frozen base, artefact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustmed.data.mscxr import load_mscxr, read_image
from trustmed.data.synth.cxr import make_synthcxr
from trustmed.errors import InputError
from trustmed.grounding.ldm import load_ldm, make_random_monai_ldm, tiny_ldm_path
from trustmed.grounding.prompt_tuning import (
    PromptTuningConfig,
    TunedPrompt,
    _step_losses,
    _Tuner,
    alignment_loss,
    build_examples,
    ldm_fingerprint,
    train_prompt,
)
from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder, tokenize_phrases

FAST = dict(epochs=2, batch_size=8, val_fraction=0.25, lr=0.05)


@pytest.fixture(scope="module")
def ldm(tmp_path_factory):
    return load_ldm(make_random_monai_ldm(tmp_path_factory.mktemp("ldm")))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthcxr")
    make_synthcxr(root, n_images=24, image_size=48, seed=2)
    return root


@pytest.fixture(scope="module")
def examples(ldm, data):
    return build_examples(ldm, load_mscxr(data, split="train"), data / "anatomy")


@pytest.fixture(scope="module")
def tiny():
    return load_ldm(tiny_ldm_path())


@pytest.fixture(scope="module")
def tiny_examples(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("synthcxr64")
    make_synthcxr(root, n_images=30, image_size=64, seed=2)
    return build_examples(tiny, load_mscxr(root, split="train"), root / "anatomy")


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_tokenize_inserts_context_slots_after_start_token(ldm):
    prompt = TunedPrompt(3, 16)
    phrases = ["small nodule in the right upper zone", "cardiomegaly"]
    ids, mask, weights = prompt.tokenize(ldm.tokenizer, phrases, token_set="content")
    plain, plain_w = tokenize_phrases(ldm.tokenizer, phrases, max_length=ldm.tokenizer.model_max_length - 3)
    assert ids.shape == (2, ldm.tokenizer.model_max_length)
    assert torch.equal(ids[:, 0], plain["input_ids"][:, 0])
    assert torch.equal(ids[:, 4:], plain["input_ids"][:, 1:])
    assert mask[:, 1:4].all() and not weights[:, :4].any()
    assert torch.equal(weights[:, 4:], plain_w[:, 1:])
    with pytest.raises(InputError, match="context vectors"):
        TunedPrompt(8, 16).tokenize(ldm.tokenizer, ["there is a small nodule in the right upper zone"])
    # ctx_position end: the slots follow the end token and are read with it
    end = TunedPrompt(3, 16, meta={"ctx_position": "end", "token_set": "end_and_padding"})
    ids, mask, weights = end.tokenize(ldm.tokenizer, ["cardiomegaly"])
    eos = int((ids[0] == ldm.tokenizer.eos_token_id).nonzero()[0])
    assert eos == 2 and mask[0, : eos + 4].all() and not mask[0, eos + 4 :].any()
    assert weights[0, eos : eos + 4].all() and not weights[0, :eos].any()
    rows, positions = end._slots(ids, ldm.tokenizer.eos_token_id)
    assert positions.tolist() == [[3, 4, 5]]


def test_context_vectors_reach_the_text_encoder_causally(ldm):
    prompt = TunedPrompt(2, 16)
    ids, mask, _ = prompt.tokenize(ldm.tokenizer, ["left pleural effusion"])
    a = prompt.encode_ids(ldm, ids, mask)
    with torch.no_grad():
        prompt.ctx.add_(1.0)
    b = prompt.encode_ids(ldm, ids, mask)
    assert torch.allclose(a[:, 0], b[:, 0])  # the start token cannot see later positions
    assert not torch.allclose(a[:, 3:], b[:, 3:])
    # the hook is gone: plain encoding is unaffected by the prompt
    plain = ldm.encode_text(ids, mask)
    assert not torch.allclose(plain, b)


def test_alignment_losses_are_minimal_on_the_mask():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1
    inside = mask / mask.sum()
    uniform = torch.full((1, 4, 4), 1 / 16)
    for kind in ("outside_mass", "kl"):
        assert float(alignment_loss(inside, mask, kind)) == pytest.approx(0.0, abs=1e-6)
        assert float(alignment_loss(uniform, mask, kind)) > 0.5
    big = torch.zeros(1, 8, 8)
    big[0, :4, :4] = 1  # pooled to 4×4 it is the same region
    assert float(alignment_loss(inside, big)) == pytest.approx(0.0, abs=1e-6)


def test_examples_count_sentences_and_use_no_boxes(examples, data):
    table = load_mscxr(data, split="train")
    assert examples.counts["pairs"] == len(table) == len(examples.sentences)
    assert examples.counts["with_location"] == int(examples.has_mask.sum()) > 0
    assert examples.latents.shape[0] == len(table)
    assert examples.masks.shape[1:] == (32, 32)


def test_training_moves_only_the_context_vectors(ldm, examples):
    before = {part: _state(getattr(ldm, part)) for part in ("unet", "text_encoder", "autoencoder")}
    init = TunedPrompt(4, 16, seed=0).ctx.detach().clone()
    prompt, summary = train_prompt(ldm, examples, PromptTuningConfig(**FAST))
    for part, state in before.items():
        after = getattr(ldm, part).state_dict()
        assert all(torch.equal(state[k], after[k]) for k in state), part
    assert not torch.allclose(prompt.ctx.detach(), init)
    assert summary["trainable_parameters"] == 4 * 16
    assert {"train_denoise", "train_align", "val_align"} <= set(summary["history"][-1])
    assert prompt.meta["base_fingerprint"] == ldm_fingerprint(ldm)


def test_lora_trains_adapters_and_alignment_falls(tiny, tiny_examples, tmp_path):
    """On the shipped tiny LDM the captured attention moves into the sentences' anatomy."""
    ldm, examples = tiny, tiny_examples
    before = _state(ldm.unet)
    cfg = PromptTuningConfig(
        **{**FAST, "epochs": 10, "lr": 0.02, "val_fraction": 0.0}, lora=True, lora_rank=2
    )
    prompt, summary = train_prompt(ldm, examples, cfg)
    assert all(torch.equal(before[k], v) for k, v in ldm.unet.state_dict().items())
    assert prompt.lora_state and any(
        float(v.abs().sum()) > 0 for k, v in prompt.lora_state.items() if "lora_B" in k
    )
    bound = prompt.apply(ldm)
    # alignment on the training pairs, same timesteps and noise: lower than the untrained prompt's
    batch = (
        examples.latents,
        *prompt.tokenize(ldm.tokenizer, examples.sentences),
        examples.masks,
        examples.has_mask,
    )
    untrained = TunedPrompt(4, prompt.ctx.shape[1], meta=prompt.meta)
    with torch.no_grad():
        aligned = [
            float(
                _step_losses(_Tuner(p, m.unet), m, cfg, batch, generator=torch.Generator().manual_seed(0))[1]
            )
            for p, m in ((untrained, ldm), (prompt, bound))
        ]
    assert aligned[1] < aligned[0] - 0.1, aligned
    assert bound.unet is not ldm.unet and ldm_fingerprint(bound) == ldm_fingerprint(ldm)
    # save → load → the same maps
    prompt.save(tmp_path / "p")
    again = TunedPrompt.load(tmp_path / "p" / "prompt.safetensors")
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    cfg_g = GroundingConfig(num_steps=5, batch_size=2)
    h1 = ZeroShotGrounder(ldm, cfg_g, prompt=prompt).ground([image], ["right pleural effusion"])[0]
    h2 = ZeroShotGrounder(ldm, cfg_g, prompt=again).ground([image], ["right pleural effusion"])[0]
    h0 = ZeroShotGrounder(ldm, cfg_g).ground([image], ["right pleural effusion"])[0]
    assert np.allclose(h1, h2, equal_nan=True)
    assert not np.allclose(h0, h1, equal_nan=True)


def test_prompt_is_refused_on_another_base_model(ldm, examples, tmp_path):
    prompt, _ = train_prompt(ldm, examples, PromptTuningConfig(**{**FAST, "epochs": 1}))
    prompt.save(tmp_path)
    other = load_ldm(make_random_monai_ldm(tmp_path / "other", seed=1))
    with pytest.raises(InputError, match="refusing to apply"):
        ZeroShotGrounder(other, prompt=TunedPrompt.load(tmp_path))
    (tmp_path / "prompt.json").write_text("{}")
    with pytest.raises(InputError, match="not a trustmed tuned prompt"):
        TunedPrompt.load(tmp_path)


def test_grounder_uses_the_prompts_token_set(ldm):
    prompt = TunedPrompt(2, 16, meta={"token_set": "content"})
    grounder = ZeroShotGrounder(ldm, GroundingConfig(token_set="end_and_padding"), prompt=prompt)
    assert grounder.config.token_set == "content"


def test_bad_training_input(ldm, data, tmp_path):
    table = load_mscxr(data, split="train")
    with pytest.raises(InputError, match="empty"):
        build_examples(ldm, table.head(0), data / "anatomy")
    bad = tmp_path / "anatomy"
    bad.mkdir()
    first = table.iloc[0]
    shape = read_image(first.path).shape
    np.savez_compressed(bad / f"{first.image_id}.npz", right_upper=np.ones((shape[0] + 1, shape[1]), bool))
    with pytest.raises(InputError, match="expected the image's"):
        build_examples(ldm, table.head(1), bad)
    only_heartless = table.head(1).assign(text="no acute cardiopulmonary process")
    ex = build_examples(ldm, only_heartless, data / "anatomy")
    assert ex.counts["no_location"] == 1
    with pytest.raises(InputError, match="no training sentence"):
        train_prompt(ldm, ex, PromptTuningConfig(**FAST))
    lingula = build_examples(ldm, table.head(1).assign(text="opacity in the lingula"), data / "anatomy")
    assert lingula.counts["unknown_location"] == 1 and lingula.counts["unknown_words"] == {"lingula": 1}

"""Prompt tuning: context slots, gradients through the captured attention, frozen base, artefact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trustmed.data.mscxr import load_mscxr, read_image
from trustmed.data.synth.cxr import make_synthcxr
from trustmed.errors import InputError
from trustmed.grounding.ldm import load_ldm, make_random_monai_ldm, tiny_ldm_path
from trustmed.grounding.prompt_tuning import (
    LoraPromptTuningConfig,
    PromptTuningConfig,
    TunedPrompt,
    alignment_loss,
    attention_heat,
    build_examples,
    insert_random_tokens,
    ldm_fingerprint,
    train_prompt,
)
from trustmed.grounding.prompt_tuning.trainer import _step_losses, _Tuner
from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder, tokenize_phrases

FAST = dict(epochs=2, batch_size=8, val_fraction=0.25, lr=0.05, n_ctx=4)  # the test model reads 16 tokens


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
    # soft IoU reads a [0, 1] map: zero on the mask itself, and a raised background costs linearly
    assert float(alignment_loss(mask, big, "soft_iou")) == pytest.approx(0.0, abs=1e-6)
    costs = [float(alignment_loss(mask + level * (1 - mask), mask, "soft_iou")) for level in (0.1, 0.3, 0.5)]
    assert costs == pytest.approx([1 - 4 / (4 + 1.2), 1 - 4 / (4 + 3.6), 1 - 4 / (4 + 6.0)])
    with pytest.raises(InputError, match="soft_iou"):
        alignment_loss(mask, mask, "dice")


def test_attention_heat_is_the_grounders_min_max_reading(tiny, tiny_examples):
    from trustmed.grounding.attention import AttentionRecorder

    prompt = TunedPrompt(2, 64)
    ids, mask, weights = prompt.tokenize(tiny.tokenizer, ["left pleural effusion", "cardiomegaly"])
    z = tiny_examples.latents[:2]
    with AttentionRecorder(tiny.unet, layers="bottleneck", keep_graph=True, reduce_heads=True) as rec:
        tiny.unet_forward(z, torch.tensor([500, 500]), prompt.encode_ids(tiny, ids, mask))
        maps = rec.maps()
    heat = attention_heat(maps, weights)
    assert heat.shape == (2, *maps[0].probs.shape[2:4]) and heat.requires_grad
    # each recorded map: heads and weighted tokens averaged, min-max per image; then the mean
    expected = 0
    for m in maps:
        a = (m.probs.detach().mean(1) * weights[:, None, None]).sum(-1) / weights.sum(-1)[:, None, None]
        lo, hi = a.amin((1, 2), keepdim=True), a.amax((1, 2), keepdim=True)
        expected = expected + (a - lo) / (hi - lo) / len(maps)
    assert torch.allclose(heat.detach(), expected, atol=1e-6)
    alignment_loss(heat, torch.ones(2, 64, 64), "soft_iou").sum().backward()
    assert prompt.ctx.grad is not None and prompt.ctx.grad.abs().sum() > 0


def test_deep_prompts_write_every_layers_slots(tiny, tiny_examples, ldm, tmp_path):
    dim = int(tiny.text_encoder.get_input_embeddings().weight.shape[1])
    prompt = TunedPrompt(3, dim, depth=2, seed=1)
    assert prompt.depth == 2 and prompt.deep_ctx.shape == (1, 3, dim)
    ids, mask, _ = prompt.tokenize(tiny.tokenizer, ["small right pneumothorax"])
    a = prompt.encode_ids(tiny, ids, mask)
    with torch.no_grad():
        prompt.deep_ctx.add_(torch.randn(prompt.deep_ctx.shape, generator=torch.Generator().manual_seed(0)))
    b = prompt.encode_ids(tiny, ids, mask)
    assert torch.allclose(a[:, 0], b[:, 0])  # the start token still sees nothing after it
    assert (a[:, 1:4] - b[:, 1:4]).abs().amax() > 0.5  # the slots take layer 1's own vectors
    assert not torch.allclose(a[:, 4:], b[:, 4:])  # and the sentence reads them
    prompt.save(tmp_path / "deep")
    again = TunedPrompt.load(tmp_path / "deep")
    assert again.depth == 2 and torch.equal(again.encode_ids(tiny, ids, mask), b)
    # the random test model's text encoder has one layer: depth "all" is CoOp there, 2 is refused
    assert TunedPrompt.load(tmp_path / "deep").deep_ctx is not None
    with pytest.raises(InputError, match="only 1 layers"):
        TunedPrompt(3, 16, depth=2).encode(ldm, ["cardiomegaly"])
    meta = json.loads((tmp_path / "deep" / "prompt.json").read_text())
    meta["depth"] = 3
    (tmp_path / "deep" / "prompt.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="depth=3"):
        TunedPrompt.load(tmp_path / "deep")
    # trained with depth "all" on the two-layer tiny LDM: both layers' vectors are learned
    init = TunedPrompt(2, dim, depth=2, seed=0)
    cfg = PromptTuningConfig(**{**FAST, "epochs": 1, "n_ctx": 2, "output_ctx": False})
    trained, summary = train_prompt(tiny, tiny_examples, cfg)
    assert trained.depth == 2 and summary["trainable_parameters"] == 2 * 2 * dim
    assert not torch.allclose(trained.deep_ctx.detach(), init.deep_ctx.detach())


def test_output_prompts_offset_only_the_slots_outputs(tiny, tiny_examples, tmp_path):
    dim = int(tiny.text_encoder.get_input_embeddings().weight.shape[1])
    prompt = TunedPrompt(3, dim, depth=2, output=True, seed=1)
    plain = TunedPrompt(3, dim, depth=2, seed=1)
    ids, mask, _ = prompt.tokenize(tiny.tokenizer, ["small right pneumothorax", "cardiomegaly"])
    torch.testing.assert_close(
        prompt.encode_ids(tiny, ids, mask), plain.encode_ids(tiny, ids, mask)
    )  # zero start
    offsets = torch.randn(3, dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        prompt.out_ctx.copy_(offsets)
    out, base = prompt.encode_ids(tiny, ids, mask), plain.encode_ids(tiny, ids, mask)
    torch.testing.assert_close(out[:, 1:4] - base[:, 1:4], offsets.expand(2, -1, -1))
    torch.testing.assert_close(out[:, [0, *range(4, out.shape[1])]], base[:, [0, *range(4, out.shape[1])]])
    # not bound by the final layer norm: the slots can leave the sphere every other token sits on
    norms = out.norm(dim=-1)
    assert norms[:, 1:4].max() > 1.5 * norms[:, 4:].max()
    prompt.save(tmp_path / "out")
    again = TunedPrompt.load(tmp_path / "out")
    assert again.output and torch.equal(again.encode_ids(tiny, ids, mask), out)
    assert not TunedPrompt.load(tmp_path / "out").lora_state
    # trained: the offsets move, and the frozen model does not
    before = _state(tiny.unet)
    cfg = PromptTuningConfig(**{**FAST, "epochs": 1, "n_ctx": 2, "output_ctx": True})
    trained, summary = train_prompt(tiny, tiny_examples, cfg)
    assert trained.output and trained.out_ctx.detach().abs().amax() > 0
    assert summary["trainable_parameters"] == 3 * 2 * dim  # input, deep and output vectors
    assert all(torch.equal(v, tiny.unet.state_dict()[k]) for k, v in before.items())


def test_token_noise_inserts_one_word_and_keeps_the_rest(tiny):
    tok = tiny.tokenizer
    phrases = ["right upper zone consolidation", "the heart is enlarged", "small left pneumothorax"]
    pool = torch.tensor(tok.convert_tokens_to_ids(["patchy", "seen"]))
    settings = (("front", "end_and_padding"), ("end", "end_and_padding"), ("front", "content"))
    for position, token_set in settings:
        prompt = TunedPrompt(3, 64, meta={"ctx_position": position, "token_set": token_set})
        ids, mask, weights = prompt.tokenize(tok, phrases)
        gen = torch.Generator().manual_seed(1)
        a, m, w = insert_random_tokens(ids, mask, weights, prompt, tok.eos_token_id, pool, 1.0, gen)
        assert a.shape == ids.shape and m.shape == mask.shape and w.shape == weights.shape
        for r in range(len(phrases)):
            words = [t for t in tok.convert_ids_to_tokens(a[r]) if t not in ("<pad>", "<|startoftext|>")]
            before = [t for t in tok.convert_ids_to_tokens(ids[r]) if t not in ("<pad>", "<|startoftext|>")]
            extra = [t for t in words if t in ("patchy", "seen")]
            assert len(extra) == 1 and [t for t in words if t not in extra] == before  # order kept
            assert words.index(extra[0]) < words.index("<|endoftext|>")  # among the phrase's words
            assert int(m[r].sum()) == int(mask[r].sum()) + 1
            # the context slots are where they were, and the new word weighs what the words weigh
            rows, slots = prompt._slots(a[r : r + 1], tok.eos_token_id)
            assert torch.equal(a[r, slots[0]], ids[r, prompt._slots(ids[r : r + 1], tok.eos_token_id)[1][0]])
            q = int((a[r] != ids[r]).nonzero()[0])
            assert float(w[r, q]) == (1.0 if token_set == "content" else 0.0)
    same = insert_random_tokens(ids, mask, weights, prompt, tok.eos_token_id, pool, 0.0)
    assert all(torch.equal(x, y) for x, y in zip(same, (ids, mask, weights), strict=True))
    # a row with no padding left is not changed
    words = ["small", "nodule", "in", "the", "right", "upper", "zone"] * 3
    full = " ".join(words[: tok.model_max_length - 5])
    ids, mask, weights = prompt.tokenize(tok, [full])
    assert bool(mask.all())
    kept = insert_random_tokens(ids, mask, weights, prompt, tok.eos_token_id, pool, 1.0)
    assert all(torch.equal(x, y) for x, y in zip(kept, (ids, mask, weights), strict=True))


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
    assert prompt.out_ctx.detach().abs().amax() > 0  # the output offsets (on by default) move too
    # depth "all" = the text encoder's one layer: input vectors and output offsets
    assert summary["trainable_parameters"] == 2 * 4 * 16
    assert prompt.depth == 1
    with pytest.raises(InputError, match="only 1 layers"):
        train_prompt(ldm, examples, PromptTuningConfig(**FAST, depth=2))
    assert {"train_denoise", "train_align", "val_align"} <= set(summary["history"][-1])
    assert prompt.meta["base_fingerprint"] == ldm_fingerprint(ldm)


def test_lora_trains_adapters_and_alignment_falls(tiny, tiny_examples, tmp_path):
    """On the shipped tiny LDM the captured attention moves into the sentences' anatomy."""
    ldm, examples = tiny, tiny_examples
    before = _state(ldm.unet)
    settings = {**FAST, "epochs": 10, "lr": 0.02, "val_fraction": 0.0}
    cfg = LoraPromptTuningConfig(**settings, lora_rank=2)
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
    untrained = TunedPrompt(prompt.n_ctx, prompt.ctx.shape[1], meta=prompt.meta)
    with torch.no_grad():
        aligned = [
            float(
                _step_losses(_Tuner(p, m.unet), m, cfg, batch, generator=torch.Generator().manual_seed(0))[1]
            )
            for p, m in ((untrained, ldm), (prompt, bound))
        ]
    assert 1 - aligned[1] > 1.5 * (1 - aligned[0]), aligned  # soft IoU with the anatomy: ×1.5 or more
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
    grounder = ZeroShotGrounder(ldm, GroundingConfig(), prompt=prompt)
    assert grounder.config.token_set == "content"
    assert ZeroShotGrounder(ldm, GroundingConfig()).config.token_set == "content"  # the paper's tokens
    unrecorded = TunedPrompt(2, 16)  # a prompt that records no token set reads its tokenizer default
    assert ZeroShotGrounder(ldm, GroundingConfig(), prompt=unrecorded).config.token_set == "end_and_padding"


def test_prompt_records_its_readout_and_the_grounder_checks_it(ldm, examples, tmp_path):
    cfg = PromptTuningConfig(**{**FAST, "epochs": 1}, layers="all", band=(0.3, 0.5), token_set="content")
    prompt, _ = train_prompt(ldm, examples, cfg)
    prompt.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "prompt.json").read_text())
    assert (meta["token_set"], meta["layers"], meta["band"]) == ("content", "all", [0.3, 0.5])
    loaded = TunedPrompt.load(tmp_path / "p")
    same = GroundingConfig(num_steps=10, layers="all", band=(0.3, 0.5), token_set="content")
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    assert ZeroShotGrounder(ldm, same, prompt=loaded).ground([image], ["left effusion"])[0].shape == (32, 32)
    for key, value, shown in (
        ("band", (0.4, 0.6), r"band=\[0.3, 0.5\] but the grounding config has band=\[0.4, 0.6\]"),
        ("layers", "bottleneck", "layers=all but the grounding config has layers=bottleneck"),
        ("token_set", "end_and_padding", "token_set=content but .* token_set=end_and_padding"),
    ):
        with pytest.raises(InputError, match=shown):
            ZeroShotGrounder(ldm, same.model_copy(update={key: value}), prompt=loaded)
    # token_set left empty follows the prompt
    assert ZeroShotGrounder(
        ldm, same.model_copy(update={"token_set": None}), prompt=loaded
    ).config.token_set == ("content")
    # a prompt file from before the readout was recorded loads, and nothing of it is checked
    for key in ("token_set", "layers", "band"):
        meta.pop(key)
    (tmp_path / "p" / "prompt.json").write_text(json.dumps(meta))
    old = TunedPrompt.load(tmp_path / "p")
    grounder = ZeroShotGrounder(
        ldm, GroundingConfig(num_steps=10, band=(0.1, 0.2), token_set="content"), prompt=old
    )
    assert grounder.config.band == (0.1, 0.2) and grounder.config.layers == "bottleneck"


def test_training_draws_timesteps_in_the_band(ldm, examples, monkeypatch):
    from trustmed.grounding.prompt_tuning import trainer

    drawn = []
    real = torch.randint

    def spy(low, high, size, **kwargs):
        drawn.append((low, high))
        return real(low, high, size, **kwargs)

    monkeypatch.setattr(trainer.torch, "randint", spy)
    cfg = PromptTuningConfig(**{**FAST, "epochs": 1, "token_noise": 0.0}, band=(0.3, 0.5))
    train_prompt(ldm, examples, cfg)
    T = ldm.num_train_timesteps
    assert drawn and set(drawn) == {(round(0.3 * T), round(0.5 * T))}


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

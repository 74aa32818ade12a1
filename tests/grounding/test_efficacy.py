"""Efficacy: the grounding methods do what they are for, on inputs whose answer is known.

* zero-shot aggregation puts the peak where attention was planted, for the tokens selected, and the
  post-processing and uncropping carry that peak to the right pixel of a non-square original;
* the same through :class:`ZeroShotGrounder`, with the UNet's cross-attention steered by a hook;
* prompt tuning lowers its alignment loss and moves the grounder's map into the anatomy mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustmed.grounding.attention import AttentionMap, cross_attention_layers
from trustmed.grounding.heatmaps import aggregate_maps, crop_info, postprocess, uncrop
from trustmed.grounding.ldm import load_ldm, make_random_monai_ldm

T = 8  # tokens
A_TOKENS, B_TOKENS = [1, 2, 3], [4, 5, 6, 7]  # two phrases' token groups, planted at different places
A_SPOT, B_SPOT, DECOY = (0.3, 0.7), (0.8, 0.2), (0.15, 0.15)  # (row, col) as fractions of the map


def _bump(h: int, w: int, spot: tuple[float, float], width: float = 0.08) -> torch.Tensor:
    """A Gaussian bump centred at ``spot`` (fractions of the height and width), on pixel centres."""
    y = (torch.arange(h) + 0.5) / h
    x = (torch.arange(w) + 0.5) / w
    return torch.exp(-((y[:, None] - spot[0]) ** 2 + (x[None, :] - spot[1]) ** 2) / (2 * width**2))


def _planted(res: int, spots: dict[int, tuple[float, float]], *, seed: int, batch: int = 2, amp=3.0):
    """(batch, 2 heads, res, res, T) probabilities: each token in ``spots`` peaks at its spot, plus
    noise; softmax-like (each position's probabilities sum to 1 over the tokens)."""
    g = torch.Generator().manual_seed(seed)
    x = 1.0 + 0.3 * torch.rand(batch, 2, res, res, T, generator=g)
    for t, spot in spots.items():
        x[..., t] += amp * _bump(res, res, spot)
    return x / x.sum(-1, keepdim=True)


def _weights(tokens: list[int], batch: int = 2) -> torch.Tensor:
    w = torch.zeros(batch, T)
    w[:, tokens] = 1.0
    return w


def _argmax2d(heat) -> tuple[int, int]:
    heat = np.asarray(heat, dtype=np.float64)
    return tuple(int(v) for v in np.unravel_index(np.nanargmax(heat), heat.shape))


def _expected(spot: tuple[float, float], size: int) -> tuple[float, float]:
    """Pixel (row, col) of a spot given as fractions, on a size × size grid of pixel centres."""
    return spot[0] * size - 0.5, spot[1] * size - 0.5


def _near(got, want, tol: float) -> bool:
    return abs(got[0] - want[0]) <= tol and abs(got[1] - want[1]) <= tol


@pytest.fixture(scope="module")
def planted_maps() -> list[AttentionMap]:
    """Three layers (8², 8², 16²) × two recorded steps: A tokens at A_SPOT, B tokens at B_SPOT, and
    a strong decoy on token 0 (the start token, never selected). A step outside the band (7) has
    the A tokens at the decoy's place."""
    spots = {0: DECOY, **dict.fromkeys(A_TOKENS, A_SPOT), **dict.fromkeys(B_TOKENS, B_SPOT)}
    maps = []
    for step in (100, 200):
        for k, res in enumerate((8, 8, 16)):
            maps.append(AttentionMap(f"l{k}", step, _planted(res, spots, seed=10 * step + k)))
    off_band = {**dict.fromkeys(A_TOKENS, DECOY), **dict.fromkeys(B_TOKENS, DECOY)}
    maps.append(AttentionMap("l0", 7, _planted(8, off_band, seed=1, amp=30.0)))
    return maps


@pytest.mark.parametrize(("tokens", "spot"), [(A_TOKENS, A_SPOT), (B_TOKENS, B_SPOT)])
def test_aggregation_peaks_where_the_selected_tokens_attend(planted_maps, tokens, spot):
    size = 32
    heat = aggregate_maps(planted_maps, _weights(tokens), size, steps={100, 200})
    assert heat.shape == (2, size, size)
    for b in range(2):
        assert _near(_argmax2d(heat[b]), _expected(spot, size), 1.0), (_argmax2d(heat[b]), spot)
    # the other group's place and the decoy are cold: each map is min-max normalised, so the
    # average is ≈ 1 at the planted spot and near 0 where only other tokens attend
    other = B_SPOT if spot == A_SPOT else A_SPOT
    for far in (other, DECOY):
        r, c = (round(v) for v in _expected(far, size))
        assert float(heat[0, r, c]) < 0.4, far
    assert float(heat.amax()) > 0.9 and float(heat.amin()) >= 0.0
    # only the steps asked for are read: the off-band step alone has A's tokens at the decoy
    if tokens == A_TOKENS:
        off = aggregate_maps(planted_maps, _weights(tokens), size, steps={7})
        assert _near(_argmax2d(off[0]), _expected(DECOY, size), 1.0)
        with pytest.raises(ValueError, match="no attention maps"):
            aggregate_maps(planted_maps, _weights(tokens), size, steps={300})


def test_aggregation_selects_tokens_per_pair(planted_maps):
    """Row 0 reads the A tokens and row 1 the B tokens of the same maps: each finds its own spot."""
    w = torch.zeros(2, T)
    w[0, A_TOKENS] = 1.0
    w[1, B_TOKENS] = 1.0
    heat = aggregate_maps(planted_maps, w, 32, steps={100, 200})
    assert _near(_argmax2d(heat[0]), _expected(A_SPOT, 32), 1.0)
    assert _near(_argmax2d(heat[1]), _expected(B_SPOT, 32), 1.0)


def test_each_map_is_min_max_normalised_before_averaging():
    """A layer whose attention is 1000× stronger does not outvote two layers that agree."""
    loud = _planted(8, dict.fromkeys(A_TOKENS, B_SPOT), seed=0)
    loud = loud * 1000.0
    quiet = [_planted(8, dict.fromkeys(A_TOKENS, A_SPOT), seed=s) for s in (1, 2)]
    maps = [AttentionMap("loud", 1, loud)] + [AttentionMap(f"q{i}", 1, q) for i, q in enumerate(quiet)]
    heat = aggregate_maps(maps, _weights(A_TOKENS), 16)
    assert _near(_argmax2d(heat[0]), _expected(A_SPOT, 16), 1.0)
    # one map, read at its own size: exactly its min-max normalised token average
    one = aggregate_maps(maps[:1], _weights(A_TOKENS), 8)
    a = loud.mean(1)[..., A_TOKENS].mean(-1)
    lo, hi = a.amin((1, 2), keepdim=True), a.amax((1, 2), keepdim=True)
    torch.testing.assert_close(one, (a - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


def test_postprocess_keeps_the_planted_region_and_uncrop_places_it(planted_maps):
    size = 32
    heat = aggregate_maps(planted_maps, _weights(A_TOKENS), size, steps={100, 200})[0].numpy()
    post = postprocess(heat, sigma=1.0)
    want = _expected(A_SPOT, size)
    assert post.max() == pytest.approx(1.0) and _near(_argmax2d(post), want, 1.0)
    # Otsu keeps a compact region around the spot: everything kept lies within 8 px of it, the
    # spot's own 3 × 3 neighbourhood is kept, and the far corner (near B_SPOT) is zero
    rows, cols = np.nonzero(post)
    assert np.hypot(rows - want[0], cols - want[1]).max() < 8
    r, c = round(want[0]), round(want[1])
    assert (post[r - 1 : r + 2, c - 1 : c + 2] > 0).all()
    assert (post[20:, :12] == 0).all()
    # onto a 48 × 80 original: shortest side 48 → 32, so the resized image is 32 × 53 (80·32/48 =
    # 53.3) and the crop starts at column (53 − 32) // 2 = 10. Back in the original, one crop pixel
    # is 1.5 rows and 80/53 columns; the crop spans rows 0..48 and columns round(10·80/53) = 15 to
    # round(42·80/53) = 63, a 48 × 48 patch
    info = crop_info(48, 80, size)
    assert (info.resized, info.top, info.left) == ((32, 53), 0, 10)
    out = uncrop(post, info)
    assert out.shape == (48, 80)
    assert np.isnan(out[:, :15]).all() and np.isnan(out[:, 63:]).all() and np.isfinite(out[:, 15:63]).all()
    # the spot at fractions (0.3, 0.7) of the crop: row 0.3·48 − 0.5, column 15 + 0.7·48 − 0.5
    orig = (0.3 * 48 - 0.5, 15 + 0.7 * 48 - 0.5)
    assert _near(_argmax2d(out), orig, 1.5), (_argmax2d(out), orig)
    assert np.nanmax(out[30:, 15:35]) == 0  # the lower-left of the field of view stays cold


# --- end to end: the grounder, with the UNet's cross-attention steered --------------------------


@pytest.fixture(scope="module")
def ldm(tmp_path_factory):
    return load_ldm(make_random_monai_ldm(tmp_path_factory.mktemp("ldm")))


def _steer(unet, spots: dict[int, tuple[float, float]]):
    """Forward pre-hooks on every cross-attention dropout that replace its input, the (B, heads, HW,
    tokens) probabilities, with planted ones; the recorder's hook then sees the planted maps."""
    handles = []
    for name in cross_attention_layers(unet):
        block = dict(unet.named_modules())[name]

        def pre_hook(module, args):
            probs = args[0]
            b, heads, hw, n_tok = probs.shape
            side = int(round(hw**0.5))
            x = torch.ones(b, heads, side, side, n_tok)
            for t, spot in spots.items():
                x[..., t] += 5.0 * _bump(side, side, spot)
            x = x / x.sum(-1, keepdim=True)
            return (x.reshape(b, heads, hw, n_tok).to(probs),)

        handles.append(block.drop_weights.register_forward_pre_hook(pre_hook))
    return handles


@pytest.mark.parametrize("mode", ["inversion", "noising"])
def test_grounder_finds_the_steered_attention(ldm, mode):
    """The phrase "nodule in the right upper zone" has content tokens 1–6 and its end token and
    padding at 7–15 (16 tokens): the content tokens are steered to one place, the end and padding
    to another. The grounder's heatmap over a 40 × 56 original peaks where the token set read
    attends."""
    from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder, tokenize_phrases

    phrase = "nodule in the right upper zone"
    _, content = tokenize_phrases(ldm.tokenizer, [phrase])
    _, ends = tokenize_phrases(ldm.tokenizer, [phrase], token_set="end_and_padding")
    assert content[0].nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6]
    assert ends[0].nonzero().flatten().tolist() == list(range(7, 16))
    spots = {**{t: A_SPOT for t in range(1, 7)}, **{t: B_SPOT for t in range(7, 16)}}
    image = np.random.default_rng(0).random((40, 56)).astype(np.float32)
    # 40 × 56 → 32 × 45, crop from column 6; back: columns round(6·56/45) = 7 to round(38·56/45) =
    # 47, 1.25 original pixels per crop pixel in both directions
    info = crop_info(40, 56, 32)
    assert (info.resized, info.left) == ((32, 45), 6)
    handles = _steer(ldm.unet, spots)
    try:
        for token_set, spot in (("content", A_SPOT), ("end_and_padding", B_SPOT)):
            cfg = GroundingConfig(num_steps=10, mode=mode, layers="all", token_set=token_set)
            heat = ZeroShotGrounder(ldm, cfg).ground([image], [phrase])[0]
            assert np.isnan(heat[:, :7]).all() and np.isnan(heat[:, 47:]).all()
            want = (spot[0] * 40 - 0.5, 7 + spot[1] * 40 - 0.5)
            assert _near(_argmax2d(heat), want, 1.5), (token_set, _argmax2d(heat), want)
            other = B_SPOT if spot == A_SPOT else A_SPOT
            r, c = round(other[0] * 40 - 0.5), round(7 + other[1] * 40 - 0.5)
            assert heat[r, c] == 0  # Otsu zeroes the other token set's place
    finally:
        for h in handles:
            h.remove()


# --- prompt tuning: the tuned prompt moves the grounder's map into the anatomy ------------------


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """The shipped tiny LDM and 20 SynthCXR training pairs, every sentence naming a location."""
    from trustmed.data.mscxr import load_mscxr, read_image
    from trustmed.data.synth.cxr import make_synthcxr
    from trustmed.grounding.ldm import tiny_ldm_path
    from trustmed.grounding.prompt_tuning import build_examples

    tiny = load_ldm(tiny_ldm_path())
    root = tmp_path_factory.mktemp("synthcxr64")
    make_synthcxr(root, n_images=30, image_size=64, seed=2)
    table = load_mscxr(root, split="train")
    examples = build_examples(tiny, table, root / "anatomy")
    assert bool(examples.has_mask.all()) and len(table) == 20
    return tiny, examples, [read_image(p) for p in table["path"]], list(table["text"])


def _overlap(heat: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """Mean soft IoU of [0, 1] maps with the masks, and mean share of the map's mass inside them."""
    inter = (heat * masks).sum((-2, -1))
    iou = inter / (heat + masks - heat * masks).sum((-2, -1))
    return float(iou.mean()), float((inter / heat.sum((-2, -1))).mean())


# Measured (seeds 0, 1, 2; untuned: soft IoU 0.089, mass inside 0.093):
#   prompt only, 30 epochs:  train alignment 0.916/0.922/0.917 → mean of last 3 ≤ 0.903;
#                            soft IoU 0.100/0.099/0.101, mass 0.107/0.105/0.107
#   LoRA recipe, 10 epochs:  train alignment ≈ 0.91 → 0.83–0.85; soft IoU 0.166/0.172/0.161,
#                            mass 0.198/0.201/0.199
#   align_weight = 0 (the alignment loss switched off): soft IoU 0.082 (prompt), 0.084/0.068 (LoRA)
TUNING = {
    "prompt": dict(epochs=30, lr=0.05, min_drop=0.005, iou_gain=0.005, mass_gain=0.006),
    "lora": dict(epochs=10, lr=0.02, min_drop=0.04, iou_gain=0.04, mass_gain=0.05),
}


@pytest.mark.parametrize("kind", ["prompt", "lora"])
def test_prompt_tuning_moves_the_map_into_the_anatomy(tiny_setup, kind):
    from trustmed.grounding.prompt_tuning import LoraPromptTuningConfig, PromptTuningConfig, train_prompt
    from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder

    tiny, examples, images, sentences = tiny_setup
    spec = TUNING[kind]
    config_class = LoraPromptTuningConfig if kind == "lora" else PromptTuningConfig
    cfg = config_class(
        epochs=spec["epochs"], lr=spec["lr"], batch_size=8, val_fraction=0.0, n_ctx=4, seed=0, device="cpu"
    )
    prompt, summary = train_prompt(tiny, examples, cfg)
    # (a) the alignment loss falls: the last epochs' mean is below the first epoch's
    align = [h["train_align"] for h in summary["history"]]
    assert len(align) == spec["epochs"]
    assert np.mean(align[-3:]) < align[0] - spec["min_drop"], align
    # (b) the grounder's map (same token set, layers; noise levels inside the prompt's band) with the
    # tuned prompt overlaps the sentences' anatomy more than without it, on the training pairs
    read = GroundingConfig(mode="noising", noise_levels=[0.45, 0.5, 0.55], otsu=False, device="cpu")
    tuned = ZeroShotGrounder(tiny, read, prompt=prompt)
    assert (tuned.config.token_set, tuned.config.layers) == (cfg.token_set, cfg.layers)
    plain = ZeroShotGrounder(tiny, read.model_copy(update={"token_set": cfg.token_set}))
    iou_t, mass_t = _overlap(tuned.crop_heatmaps(images, sentences)[0], examples.masks)
    iou_0, mass_0 = _overlap(plain.crop_heatmaps(images, sentences)[0], examples.masks)
    assert iou_t > iou_0 + spec["iou_gain"], (iou_t, iou_0)
    assert mass_t > mass_0 + spec["mass_gain"], (mass_t, mass_0)

"""The zero-shot pipeline: DDIM inversion exactness, geometry, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustmed.errors import InputError
from trustmed.grounding.heatmaps import crop_info, postprocess, uncrop
from trustmed.grounding.inversion import (
    band_steps,
    band_timesteps,
    ddim_invert,
    ddim_timesteps,
    to_epsilon_and_x0,
)
from trustmed.grounding.ldm import build_tokenizer, load_ldm, make_alphas_cumprod, make_random_monai_ldm
from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder, prepare_image, tokenize_phrases


@pytest.fixture(scope="module")
def ldm(tmp_path_factory):
    return load_ldm(make_random_monai_ldm(tmp_path_factory.mktemp("ldm")))


def test_trailing_spacing_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    sched.set_timesteps(300)
    assert ddim_timesteps(1000, 300).tolist() == sorted(sched.timesteps.tolist())
    with pytest.raises(InputError):
        ddim_timesteps(1000, 0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inversion_is_exact_for_a_model_that_knows_the_noise(prediction_type):
    torch.manual_seed(0)
    alphas = make_alphas_cumprod(1000)
    z0, eps0 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    steps = ddim_timesteps(1000, 20)

    def predict(z, t, i):
        a = alphas[t]
        if prediction_type == "epsilon":
            return eps0
        return (eps0 - (1 - a).sqrt() * z) / a.sqrt()  # the v that converts back to eps0 at this z

    zt = ddim_invert(predict, z0, alphas, steps, prediction_type)
    a_T = alphas[steps[-1]]
    torch.testing.assert_close(zt, a_T.sqrt() * z0 + (1 - a_T).sqrt() * eps0, rtol=1e-4, atol=1e-4)
    a = torch.tensor(0.3)
    xt = a.sqrt() * z0 + (1 - a).sqrt() * eps0
    eps, x0 = to_epsilon_and_x0(a.sqrt() * eps0 - (1 - a).sqrt() * z0, xt, a, "v_prediction")
    torch.testing.assert_close(eps, eps0)
    torch.testing.assert_close(x0, z0)


def test_crop_geometry_and_nan_uncrop():
    # wide: 40 × 80 → 32 × 64, crop columns 16..48; back at 1.25 px per crop pixel: columns 20..60
    info = crop_info(40, 80, 32)
    assert info.resized == (32, 64) and info.left == 16 and info.top == 0
    heat = np.zeros((32, 32))
    heat[:, :16] = 1.0  # the crop's left half
    out = uncrop(heat, info)
    assert out.shape == (40, 80)
    assert np.isnan(out[:, :20]).all() and np.isnan(out[:, 60:]).all() and np.isfinite(out[:, 20:60]).all()
    assert (out[:, 20:39] > 0.999).all() and (out[:, 41:60] == 0).all()  # left half → columns 20..40
    # tall: 80 × 40 → 64 × 32, crop rows 16..48 → original rows 20..60
    tall = uncrop(np.ones((32, 32)), crop_info(80, 40, 32))
    assert np.isnan(tall[:20]).all() and np.isnan(tall[60:]).all() and (np.abs(tall[20:60] - 1) < 1e-6).all()
    # square: nothing is cut, nothing is NaN
    assert np.isfinite(uncrop(np.ones((32, 32)), crop_info(50, 50, 32))).all()


def test_postprocess_otsu_keeps_exactly_the_bright_blob():
    rng = np.random.default_rng(0)
    spot = 0.2 * rng.random((32, 32))
    blob = np.zeros((32, 32), bool)
    blob[10:14, 20:24] = True
    spot[blob] = 1.0
    post = postprocess(spot, sigma=0.0)
    np.testing.assert_array_equal(post > 0, blob)
    assert (post[blob] == 1.0).all()
    # smoothed: the blob's core is kept, a ring of a few pixels at most around it, nothing else
    smooth = postprocess(spot, sigma=1.0)
    assert smooth.max() == pytest.approx(1.0) and (smooth[11:13, 21:23] > 0).all()
    rows, cols = np.nonzero(smooth)
    assert rows.min() >= 8 and rows.max() <= 15 and cols.min() >= 18 and cols.max() <= 25
    # without Otsu, the min-max normalised map is returned whole
    plain = postprocess(spot, sigma=0.0, otsu=False)
    np.testing.assert_allclose(plain, (spot - spot.min()) / (spot.max() - spot.min()))


@pytest.mark.parametrize("mode", ["inversion", "noising"])
def test_pipeline_shapes_range_and_determinism(ldm, mode):
    rng = np.random.default_rng(0)
    images = [rng.random((40, 56)).astype(np.float32), rng.random((32, 32)).astype(np.float32)]
    phrases = ["small nodule in the right upper zone", "left pleural effusion"]
    cfg = GroundingConfig(num_steps=10, mode=mode, noise_levels=[0.3, 0.6], batch_size=2)
    heat = ZeroShotGrounder(ldm, cfg).ground(images, phrases)
    assert [h.shape for h in heat] == [(40, 56), (32, 32)]
    # 40 × 56 → 32 × 45, crop from column 6 → original columns round(6·56/45) = 7 to 47
    assert np.isnan(heat[0][:, :7]).all() and np.isnan(heat[0][:, 47:]).all()
    assert np.isfinite(heat[0][:, 7:47]).all() and np.isfinite(heat[1]).all()
    for h in heat:  # min-max normalised (then resized back), Otsu zeroes the part below its threshold
        assert 0.9 < np.nanmax(h) <= 1.0 + 1e-6 and np.nanmin(h) == 0.0
        assert 0.0 < np.nanmean(h > 0) < 1.0
    again = ZeroShotGrounder(ldm, cfg).ground(images, phrases)
    np.testing.assert_array_equal(np.nan_to_num(heat[0], nan=-1), np.nan_to_num(again[0], nan=-1))
    single = ZeroShotGrounder(ldm, cfg.model_copy(update={"batch_size": 1})).ground(images[1:], phrases[1:])
    np.testing.assert_allclose(single[0], heat[1], atol=1e-4)


def test_tokenize_phrases_selects_the_expected_positions():
    tok = build_tokenizer(
        ["nodule", "in", "the", "right", "upper", "zone", "left", "effusion"], max_length=10
    )
    phrases = ["nodule in the right upper zone", "small left effusion"]  # "small" is unknown
    enc, content = tokenize_phrases(tok, phrases)
    assert enc["input_ids"].shape == (2, 10)
    assert content.tolist() == [[0, 1, 1, 1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]]
    _, ends = tokenize_phrases(tok, phrases, token_set="end_and_padding")  # the end token and after
    assert ends.tolist() == [[0, 0, 0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]
    _, words = tokenize_phrases(tok, phrases, words=["Nodule", "effusion"])
    assert words.tolist() == [[0, 1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]]
    with pytest.raises(InputError, match="none of the words"):
        tokenize_phrases(tok, phrases, words=["zone"])
    with pytest.raises(InputError, match="token_set"):
        tokenize_phrases(tok, phrases, token_set="all")


def test_token_selection_changes_the_map(ldm):
    image = [np.random.default_rng(1).random((32, 32)).astype(np.float32)]
    base = GroundingConfig(num_steps=10, otsu=False)
    full = ZeroShotGrounder(ldm, base).crop_heatmaps(image, ["nodule in the right upper zone"])[0]
    word = ZeroShotGrounder(ldm, base.model_copy(update={"tokens": ["nodule"]})).crop_heatmaps(
        image, ["nodule in the right upper zone"]
    )[0]
    assert (full - word).abs().amax() > 0.05


def test_bad_input(ldm):
    g = ZeroShotGrounder(ldm, GroundingConfig(num_steps=5))
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(InputError, match="only special or unknown tokens"):
        g.ground([image], [""])
    long = " ".join(["nodule"] * 40)
    with pytest.raises(InputError, match="exceed the tokenizer's maximum"):
        g.ground([image], [long])
    ok = ZeroShotGrounder(ldm, GroundingConfig(num_steps=5, truncate=True)).ground([image], [long])
    assert ok[0].shape == (32, 32)
    with pytest.raises(InputError, match="channels"):
        prepare_image(np.zeros((4, 32, 32)), ldm)
    with pytest.raises(InputError, match="one phrase per image"):
        g.ground([image, image], ["nodule"])


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_band_is_a_part_of_the_noise_schedule(spacing):
    """The recorded steps are those whose timestep lies in [band[0]·T, band[1]·T), for any spacing."""
    for band in ((0.4, 0.6), (0.0, 0.2), (0.75, 1.0)):
        lo, hi = band_timesteps(band, 1000)
        for n in (7, 20, 50, 300):
            steps = ddim_timesteps(1000, n, spacing)
            chosen = band_steps(steps, band, 1000)
            inside = [i for i, t in enumerate(steps) if lo <= t < hi]
            assert list(chosen) == inside or (not inside and len(chosen) == 1)
    # leading spacing stops at 900: the band is read in timesteps, not as a share of the steps
    leading = ddim_timesteps(1000, 300, "leading")
    assert [int(leading[i]) for i in band_steps(leading, (0.4, 0.6), 1000)][::65] == [402, 597]


def test_grounder_records_only_the_band(ldm, monkeypatch):
    from trustmed.grounding import zero_shot

    seen = {}
    real = zero_shot.aggregate_maps

    def spy(maps, weights, size, *, steps=None):
        seen["steps"] = steps
        return real(maps, weights, size, steps=steps)

    monkeypatch.setattr(zero_shot, "aggregate_maps", spy)
    image = [np.random.default_rng(2).random((32, 32)).astype(np.float32)]
    ZeroShotGrounder(ldm, GroundingConfig(num_steps=20, band=(0.25, 0.5))).ground(image, ["nodule"])
    assert ldm.num_train_timesteps == 1000 and seen["steps"] == {299, 349, 399, 449, 499}  # [250, 500)


def test_band_must_be_an_increasing_pair_of_fractions():
    from trustmed.config import load_config
    from trustmed.grounding.pipeline import GroundRunConfig

    for bad in ("[0.6,0.4]", "[0.2,1.5]", "[0.5,0.5]"):
        with pytest.raises(InputError, match="grounding.band.*0 <= start < end <= 1"):
            load_config(GroundRunConfig, None, [f"grounding.band={bad}"])

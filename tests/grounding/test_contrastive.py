"""The contrastive grounding baseline of the benchmarks (``benchmarks/_lib/contrastive.py``) and the
grounding benchmarks' shared helpers: geometry, save/load, training, the two losses, bad input."""

from __future__ import annotations

import doctest
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from trustmed.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _lib import contrastive as contrastive_module  # noqa: E402
from _lib import grounding as bench_grounding  # noqa: E402
from _lib.contrastive import (  # noqa: E402
    ContrastiveConfig,
    ContrastiveGrounder,
    ContrastiveModel,
    contrastive_losses,
    info_nce,
    local_scores,
    train_contrastive,
)

torch.set_num_threads(1)

SMALL = {"channels": [8, 16], "embed_dim": 16, "text_hidden": 16, "text_layers": 1}


@pytest.fixture(scope="module")
def model():
    return ContrastiveModel(ContrastiveConfig(**SMALL)).eval()


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((40, 56)).astype(np.float32), rng.random((32, 32)).astype(np.float32)]


PHRASES = ["small nodule in the right upper zone", "left pleural effusion"]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.nan_to_num(x, nan=-1), np.nan_to_num(y, nan=-1))


def test_heatmap_shapes_range_and_nan_padding(model):
    grounder = ContrastiveGrounder(model, batch_size=2)
    heat = grounder.ground(_images(), PHRASES)
    assert [h.shape for h in heat] == [(40, 56), (32, 32)]
    # 40 × 56 → 64 × 90, centre crop 64 × 64: columns 0-7 and 48-55 of the original are outside
    assert np.isnan(heat[0][:, :8]).all() and np.isnan(heat[0][:, 48:]).all()
    assert np.isfinite(heat[0][:, 8:48]).all() and np.isfinite(heat[1]).all()
    for h in heat:
        assert np.nanmin(h) >= 0 and 0.5 < np.nanmax(h) <= 1
    assert set(grounder.timing_) == {"total", "pairs", "seconds_per_pair"} and grounder.timing_["pairs"] == 2
    single = ContrastiveGrounder(model, batch_size=1).ground(_images()[1:], PHRASES[1:])
    np.testing.assert_allclose(single[0], heat[1], atol=1e-5)


def test_heatmap_is_the_patch_sentence_cosine(model):
    """Without filtering or Otsu, the map is the upsampled, min-max normalised cosine map."""
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    raw = ContrastiveGrounder(model, sigma=0.0, otsu=False).ground([image], PHRASES[:1])[0]
    enc = model.tokenizer(PHRASES[:1], padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        cos = model.similarity_maps(
            torch.from_numpy(image)[None, None], enc["input_ids"], enc["attention_mask"]
        )
    cos = cos[0].numpy()
    cell = 64 // cos.shape[0]
    hot, cold = np.unravel_index(np.argmax(cos), cos.shape), np.unravel_index(np.argmin(cos), cos.shape)
    # pixel (cell·i + cell/2 - 1) is 1/16 of a cell from the centre of patch i
    assert raw[tuple(cell * k + cell // 2 - 1 for k in hot)] > 0.85
    assert raw[tuple(cell * k + cell // 2 - 1 for k in cold)] < 0.15


def test_save_load_round_trip_gives_identical_heatmaps(model, tmp_path):
    model.save(tmp_path / "m")
    loaded = ContrastiveModel.load(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    _same(
        ContrastiveGrounder(model).ground(_images(), PHRASES),
        ContrastiveGrounder(loaded).ground(_images(), PHRASES),
    )


def test_load_rejects_bad_folders(model, tmp_path):
    with pytest.raises(InputError, match="not found"):
        ContrastiveModel.load(tmp_path / "missing")
    folder = model.save(tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    other = ContrastiveModel(ContrastiveConfig(**{**SMALL, "embed_dim": 8})).save(tmp_path / "other")
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="do not match"):
        ContrastiveModel.load(other)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        ContrastiveModel.load(folder)
    (folder / "config.json").write_text(json.dumps({**meta, "config": {**meta["config"], "typo": 1}}))
    with pytest.raises(InputError, match="invalid config"):
        ContrastiveModel.load(folder)


def test_bad_input_is_an_input_error(model):
    grounder = ContrastiveGrounder(model)
    with pytest.raises(InputError, match="2 images but 1 phrases"):
        grounder.ground(_images(), PHRASES[:1])
    with pytest.raises(InputError, match="only special or unknown"):
        grounder.ground(_images()[:1], ["xyzzy plugh"])
    with pytest.raises(InputError, match="only special or unknown"):
        grounder.ground(_images()[:1], [""])
    with pytest.raises(InputError, match="exceed"):
        grounder.ground(_images()[:1], [" ".join(["nodule"] * 30)])
    for bad in (np.zeros((3, 8, 8)), np.zeros((1, 1, 8, 8)), np.zeros(8), np.full((8, 8), np.nan)):
        with pytest.raises(InputError, match="image"):
            grounder.ground([bad], PHRASES[:1])
    with pytest.raises(InputError, match="columns text"):
        train_contrastive(ContrastiveConfig(**SMALL), _table_without("text"))


def _table_without(column):
    return pd.DataFrame({"path": ["a.png", "b.png"], "text": ["x", "y"]}).drop(columns=[column])


def _full_batch_loss(model: ContrastiveModel, table) -> float:
    """Both losses over every (image, sentence) pair of ``table`` at once."""
    from trustmed.grounding.train_ldm import prepare_images

    cfg = model.config
    paths = sorted(set(table.path))
    index = torch.tensor([paths.index(p) for p in table.path])
    images = prepare_images(paths, cfg.image_size)[index]
    enc = model.tokenizer(
        list(table.text),
        padding="max_length",
        max_length=cfg.max_length,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    words = (enc["attention_mask"] == 1) & (enc["special_tokens_mask"] == 0)
    text = torch.tensor(pd.factorize(table.text)[0])
    ignore = (index[:, None] == index[None]) | (text[:, None] == text[None])
    with torch.no_grad():
        out = contrastive_losses(
            model.eval(), images, enc["input_ids"], enc["attention_mask"], words, ignore, cfg
        )
    return float(out["loss"])


def test_training_lowers_the_loss_without_boxes(tmp_path):
    from trustmed.data.mscxr import load_mscxr
    from trustmed.data.synth.cxr import make_synthcxr

    make_synthcxr(tmp_path / "d", n_images=40, image_size=64, seed=0)
    table = load_mscxr(tmp_path / "d", split="train").drop(columns=["boxes"])
    cfg = ContrastiveConfig(**SMALL, epochs=30, batch_size=8, lr=3e-3)
    before = _full_batch_loss(ContrastiveModel(cfg), table)  # the initialisation is seeded by cfg.seed
    trained, summary = train_contrastive(cfg, table)
    after = _full_batch_loss(trained, table)
    # uniform logits would give about 2 · log(28) ≈ 6.7 (two losses, ~28 candidates per softmax)
    assert after < 0.75 * before and after < 5.5, (before, after)
    losses = [row["train_loss"] for row in summary["history"]]
    assert len(losses) == 30 and losses[-1] < losses[0]
    assert not trained.training and next(trained.parameters()).device.type == "cpu"
    assert summary["n_images"] == table.path.nunique() and summary["n_pairs"] == len(table)
    assert summary["parameters"]["total"] == sum(p.numel() for p in trained.parameters())


def _unit(*shape, seed=0):
    return torch.nn.functional.normalize(
        torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1
    )


def test_local_scores_ignore_patch_order_and_padding():
    tokens, patches = _unit(3, 6, 8), _unit(4, 10, 8, seed=1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1] * 6]).bool()
    scores = local_scores(tokens, mask, patches)
    assert scores.shape == (4, 3)
    shuffled = patches[:, torch.randperm(10, generator=torch.Generator().manual_seed(2))]
    torch.testing.assert_close(local_scores(tokens, mask, shuffled), scores)
    repadded = torch.where(mask[..., None], tokens, _unit(3, 6, 8, seed=3))
    torch.testing.assert_close(local_scores(repadded, mask, patches), scores)


def test_local_score_finds_the_image_that_contains_the_words():
    """Two words equal to patches of image 0 and orthogonal to image 1's.

    In image 0 each word attends to itself (agreement 1), in image 1 to the mean of orthogonal
    patches (agreement 0); log-sum-exp pooling over the two words adds log(2) / γ2 to both.
    """
    eye = torch.eye(8)
    patches = torch.stack([eye[[0, 1, 2, 3]], eye[[4, 5, 6, 7]]])
    tokens = eye[[2, 0]][None]
    scores = local_scores(
        tokens, torch.ones(1, 2, dtype=torch.bool), patches, attention_scale=50.0, aggregation_scale=5.0
    )
    expected = torch.tensor([[1.0], [0.0]]) + np.log(2) / 5.0
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)


def test_info_nce_leaves_out_ignored_pairs():
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[0, 1] = ignore[1, 0] = True  # rows 0 and 1 show the same image
    boosted = logits.clone()
    boosted[0, 1] = boosted[1, 0] = 50.0
    torch.testing.assert_close(info_nce(boosted, ignore), info_nce(logits, ignore))
    assert info_nce(boosted) > info_nce(logits) + 10
    # a diagonal entry is never ignored
    torch.testing.assert_close(info_nce(logits, torch.eye(4, dtype=torch.bool)), info_nce(logits))


@pytest.mark.parametrize("module", [contrastive_module, bench_grounding], ids=lambda m: m.__name__)
def test_doctests_of_the_benchmark_modules(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_the_earlier_recipe_is_a_valid_prompt_config():
    from trustmed.grounding.prompt_tuning import PromptTuningConfig

    cfg = PromptTuningConfig(**bench_grounding.INPUT_RECIPE)
    assert (cfg.output_ctx, cfg.align_loss, cfg.epochs) == (False, "kl", 12)

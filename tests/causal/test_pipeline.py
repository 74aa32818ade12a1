"""The coVAE pipeline: split, training-set normalisation, one owner of the training defaults, save/load."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from trustmed.causal import AlphaSchedule, CoVAE, CoVAEConfig, encode
from trustmed.causal import demo as causal_demo
from trustmed.causal.pipeline import (
    CausalDataConfig,
    CausalFitConfig,
    CausalModelConfig,
    CausalTrainConfig,
    build_covae,
    evaluate_covae,
    fit_covae,
    fit_normalisation,
    fit_pipeline,
    load_covae,
    normalise,
    save_covae,
    split_indices,
)
from trustmed.config import load_config
from trustmed.data.synth.anm import make_latent_anm, save_anm
from trustmed.errors import InputError

SMALL = CausalFitConfig(
    seed=3,
    data=CausalDataConfig(n=240, d=3, observed_dim=6),
    model=CausalModelConfig(latent_dim=3, hidden=16),
    train=CausalTrainConfig(epochs=3, batch_size=32, warmup_epochs=1, ramp_epochs=1),
)


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    return fit_pipeline(SMALL)


def test_split_is_seeded_disjoint_and_complete():
    train, val = split_indices(50, 0.2, seed=1)
    assert len(val) == 10 and len(train) == 40
    assert sorted([*train, *val]) == list(range(50))
    again = split_indices(50, 0.2, seed=1)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(split_indices(50, 0.2, seed=2)[1], val)
    with pytest.raises(InputError, match="val_fraction"):
        split_indices(50, 1.0, seed=0)


def test_normalisation_uses_training_statistics_only(fitted):
    x = fitted.data.x
    train_mean = x[fitted.train_index].mean(0)
    np.testing.assert_allclose(fitted.normalisation["mean"], train_mean, rtol=1e-5)
    assert not np.allclose(fitted.normalisation["mean"], x.mean(0), rtol=1e-5)
    scaled = normalise(x[fitted.train_index].astype(np.float32), fitted.normalisation)
    np.testing.assert_allclose(scaled.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(scaled.std(0), 1, atol=1e-4)
    assert fit_normalisation(np.zeros((4, 1, 8, 8))) == {}


def test_fit_pipeline_scores_the_validation_split(fitted):
    assert fitted.metrics["split"] == "val" and fitted.metrics["n_samples"] == len(fitted.val_index) == 48
    assert {"mcc_pearson", "r2", "order_divergence", "order_divergence_score", "recon_mse"} <= set(
        fitted.metrics
    )
    assert fitted.latents.shape == (240, 3)


def test_fit_covae_takes_every_training_setting_from_the_train_config():
    settings = set(CausalTrainConfig.model_fields)
    assert settings.isdisjoint(inspect.signature(fit_covae).parameters)
    x = np.random.default_rng(0).normal(size=(96, 4)).astype(np.float32)
    torch.manual_seed(0)
    defaults = CausalTrainConfig()
    short = defaults.model_copy(update={"epochs": defaults.warmup_epochs + defaults.ramp_epochs + 1})
    result = fit_covae(CoVAE(4, 2, hidden=8), x, config=short.model_copy(update={"batch_size": 32}))
    steps = 96 // 32
    schedule = AlphaSchedule(defaults.alpha, defaults.warmup_epochs * steps, defaults.ramp_epochs * steps)
    expected = [[schedule.step() for _ in range(steps)][-1] for _ in range(short.epochs)]
    assert [row["alpha"] for row in result.history] == pytest.approx(expected)
    assert result.history[-1]["alpha"] == defaults.alpha


def test_save_load_roundtrip_and_evaluation_reuse_the_training_normalisation(fitted, tmp_path):
    fitted.write(tmp_path / "model")
    model, spec = load_covae(tmp_path / "model")
    assert spec["normalisation"] == fitted.normalisation
    assert spec["config"]["train"] == SMALL.train.model_dump(mode="json")
    x = normalise(fitted.data.x.astype(np.float32), fitted.normalisation)
    np.testing.assert_allclose(encode(model, x), fitted.latents, atol=1e-6)
    save_anm(fitted.data, tmp_path / "data")
    latents, metrics = evaluate_covae(tmp_path / "model", tmp_path / "data")
    np.testing.assert_allclose(latents, fitted.latents, atol=1e-6)
    assert metrics["n_samples"] == 240 and "recon_mse" in metrics


def test_evaluation_refuses_data_of_another_shape(fitted, tmp_path):
    fitted.write(tmp_path / "model")
    save_anm(make_latent_anm(n=100, d=3, observed_dim=5, seed=0), tmp_path / "other")
    with pytest.raises(InputError, match="do not fit the model's inputs"):
        evaluate_covae(tmp_path / "model", tmp_path / "other")


def test_save_covae_keeps_image_models(tmp_path):
    x = np.zeros((2, 1, 16, 16), dtype=np.float32)
    model = build_covae(CausalModelConfig(latent_dim=2, hidden=8), x)
    save_covae(model, tmp_path, normalisation={})
    loaded, spec = load_covae(tmp_path)
    assert spec["normalisation"] == {} and loaded.config == model.config
    torch.testing.assert_close(
        loaded.encode(torch.ones(1, 1, 16, 16)), model.encode(torch.ones(1, 1, 16, 16))
    )


def test_validation_data_do_not_change_training():
    x = np.random.default_rng(0).normal(size=(128, 5)).astype(np.float32)
    config = CausalTrainConfig(epochs=3, batch_size=32, warmup_epochs=1, ramp_epochs=1)
    latents = []
    for x_val in (None, x[:64]):
        torch.manual_seed(0)
        model = CoVAE(5, 2, hidden=8)
        fit_covae(model, x, x_val=x_val, config=config, seed=1)
        latents.append(encode(model, x))
    np.testing.assert_array_equal(*latents)


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_default_prior_is_the_gaussian_mixture_everywhere():
    # One owner (CoVAEConfig); the model, the CLI's config, the example configs and the demo follow it.
    assert CoVAEConfig.prior == "gmm" and CoVAEConfig.n_components == 8
    assert CoVAE(4, 2).prior is not None and CoVAE(4, 2, prior="normal").prior is None
    fit_defaults = CausalFitConfig()
    assert (fit_defaults.model.prior, fit_defaults.model.n_components) == ("gmm", 8)
    assert build_covae(fit_defaults.model, np.zeros((2, 6), dtype=np.float32)).prior is not None
    for name in ("causal_anm.yaml", "causal_pendulum.yaml"):
        cfg = load_config(CausalFitConfig, EXAMPLES / name)
        assert (cfg.model.prior, cfg.model.n_components) == ("gmm", 8), name
    assert "prior=" not in inspect.getsource(causal_demo)  # the demo takes the library's default
    with pytest.raises(InputError, match="prior"):
        CoVAE(4, 2, prior="laplace")

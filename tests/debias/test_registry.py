"""The method registry: one entry makes a method usable everywhere; estimators are scikit-learn estimators;
every default has one owner."""

import copy
import inspect

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, clone
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.debias.base import DebiasEstimator
from trustmed.debias.data import GroupedSet
from trustmed.debias.registry import METHODS, Method, get_method, method_names, register
from trustmed.debias.retrain import RetrainFair
from trustmed.debias.run import DebiasCompareConfig, DebiasRunConfig
from trustmed.debias.selection import compare_methods
from trustmed.debias.tables import comparison_table
from trustmed.errors import InputError
from trustmed.models import ModelSpec, build_model
from trustmed.train.classifier import TrainConfig


class ShiftBias(DebiasEstimator):
    """A stand-in baseline: adds ``shift`` to the head's bias."""

    def __init__(self, attribute=None, *, shift=0.0, seed=0):
        self.attribute = attribute
        self.shift = shift
        self.seed = seed

    def fit(self, model, external_set):
        self.model_ = copy.deepcopy(model)
        with torch.no_grad():
            self.model_.head.bias += self.shift
        self.cost_ = {
            "wall_time_s": 0.0,
            "epochs": 0,
            "samples_seen": len(external_set),
            "parameter_updates": 1,
        }
        return self


@pytest.fixture
def shift_bias():
    method = register(Method("shift_bias", ShiftBias, grid=({"shift": 0.0}, {"shift": -0.3})))
    yield method
    METHODS.pop(method.name)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch="tiny_cnn", image_size=8, width=4))


def _data(n: int = 64, seed: int = 0) -> GroupedSet:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = torch.as_tensor(rng.normal(size=(n, 3, 8, 8)), dtype=torch.float32)
    images += torch.as_tensor(labels, dtype=torch.float32).view(-1, 1, 1, 1)
    return GroupedSet(images, labels, rng.choice(["light", "dark"], n), attribute="tone")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_estimator_is_a_scikit_learn_estimator(name):
    method = get_method(name)
    estimator = method.build({}, attribute="tone", seed=3)
    assert isinstance(estimator, BaseEstimator)
    params = estimator.get_params()
    assert params["attribute"] == "tone" and params["seed"] == 3
    assert {k: params[k] for k in method.fixed} == dict(method.fixed)
    for setting in method.settings() + method.settings(quick=True):
        tuned = clone(estimator).set_params(**setting)
        assert {k: tuned.get_params()[k] for k in setting} == setting
        assert estimator.get_params() == params  # clone left the template alone


def test_ablations_fix_their_switch_and_reuse_swift():
    assert get_method("swift_nomask").build().use_mask is False
    assert get_method("swift_step1_only").build().head_step is False
    for name in ("swift_nomask", "swift_step1_only"):
        assert get_method(name).ablation_of == "swift"
        with pytest.raises(InputError, match="unknown parameter"):
            get_method(name).build(dict(get_method(name).fixed))


def test_unknown_parameters_are_named_with_the_valid_ones():
    with pytest.raises(
        InputError, match=r"unknown parameter 'lr_forgett' of method 'swift'; valid: .*lr_forget"
    ):
        get_method("swift").build({"lr_forgett": 1e-3})
    with pytest.raises(InputError, match="unknown parameter 'seed'"):
        get_method("fairprune").build({"seed": 1})  # set by the run (--seed), not per method
    with pytest.raises(InputError, match=r"grids\.finetune: unknown parameter 'beta'"):
        compare_methods(_model(), {"external": _data(), "val": _data()}, grids={"finetune": [{"beta": 1.0}]})
    with pytest.raises(InputError, match="unknown debiasing method 'nope'"):
        get_method("nope")


def test_run_epochs_map_onto_each_method():
    assert get_method("swift").build(epochs=3).get_params()["unlearn_epochs"] == 3
    assert get_method("bmft").build(epochs=3).get_params()["n_epochs"] == 3
    assert get_method("finetune_fair").build(epochs=3).get_params()["epochs"] == 6
    assert get_method("retrain_fair").build(epochs=3).get_params()["epochs"] == TrainConfig().optim.epochs


@pytest.mark.parametrize("config", [DebiasRunConfig, DebiasCompareConfig])
def test_config_defaults_are_the_estimators_defaults(config):
    cfg = config()
    for name in METHODS:
        method = get_method(name)
        assert (
            method.build(bias_loss=cfg.bias_loss, epochs=cfg.epochs).get_params()
            == method.build().get_params()
        )


def test_compare_config_defaults_are_the_protocols_defaults():
    cfg = DebiasCompareConfig()
    defaults = {k: p.default for k, p in inspect.signature(compare_methods).parameters.items()}
    for key in ("n_boot", "guard", "select_gap", "quick", "seed"):
        assert getattr(cfg, key) == defaults[key], key
    assert tuple(cfg.eval_splits) == defaults["eval_splits"]


def test_retrain_fair_defaults_are_trustmed_trains():
    train = TrainConfig()
    retrain = RetrainFair()
    assert (retrain.epochs, retrain.lr, retrain.optimizer, retrain.weight_decay, retrain.cosine) == (
        train.optim.epochs,
        train.optim.lr,
        train.optim.name,
        train.optim.weight_decay,
        train.optim.cosine,
    )
    assert (retrain.batch_size, retrain.augment) == (train.data.batch_size, train.data.augment)
    # a checkpoint's config that leaves keys out keeps trustmed train's defaults for them
    assert RetrainFair.from_train_config({"optim": {"lr": 0.5}}).get_params() == {
        **retrain.get_params(),
        "lr": 0.5,
    }


def test_registering_a_method_makes_it_usable_by_compare(shift_bias):
    assert "shift_bias" in method_names()
    sets = {"external": _data(64, 0), "val": _data(64, 1), "test": _data(64, 2)}
    comparison = compare_methods(
        _model(), sets, methods=["erm", "shift_bias"], n_boot=0, eval_splits=("test",)
    )
    result = comparison.results["shift_bias"]
    assert [row["params"] for row in result.search] == [{"shift": 0.0}, {"shift": -0.3}]
    assert result.params in ({"shift": 0.0}, {"shift": -0.3})
    assert set(comparison_table(comparison)["method"]) == {"erm", "shift_bias"}
    with pytest.raises(ValueError, match="already registered"):
        register(shift_bias)


def test_registering_a_method_lists_it_in_the_cli(shift_bias, tmp_path):
    result = CliRunner().invoke(app, ["debias", "run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "shift_bias" in result.output

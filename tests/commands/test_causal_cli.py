"""``trustmed causal``: synth, fit and eval end to end, and bad input (exit code 2, no output)."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from trustmed.cli import app

runner = CliRunner()
FAST = ["--set", "train.epochs=2", "--set", "train.batch_size=32", "--set", "train.warmup_epochs=1",
        "--set", "train.ramp_epochs=0", "--set", "model.hidden=16", "--quiet"]  # fmt: skip


def test_synth_fit_eval(tmp_path):
    data = tmp_path / "anm"
    res = runner.invoke(app, ["causal", "synth-anm", "--out", str(data), "--set", "n=200", "--set", "d=3",
                              "--set", "observed_dim=6", "--seed", "1", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert {"x.npy", "z.npy", "adjacency.csv", "meta.json"} <= {p.name for p in data.iterdir()}
    run = tmp_path / "run"
    res = runner.invoke(app, ["causal", "fit", "--out", str(run), "--set", f"data.path={data}",
                              "--set", "model.latent_dim=3", "--set", "train.criterion=residual",
                              *FAST])  # fmt: skip
    assert res.exit_code == 0, res.output
    history = (run / "history.csv").read_text().splitlines()
    assert (
        "val_order" in history[0]
        and json.loads((run / "model.json").read_text())["config"]["train"]["criterion"] == "residual"
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["mcc_pearson"] <= 1 and metrics["split"] == "val"
    assert np.load(run / "latents.npy").shape == (200, 3)
    spec = json.loads((run / "model.json").read_text())
    assert spec["architecture"]["latent_dim"] == 3 and len(spec["normalisation"]["mean"]) == 6
    res = runner.invoke(app, ["causal", "eval", "--out", str(tmp_path / "ev"), "--set", f"model={run}",
                              "--set", f"data={data}", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"mcc_pearson", "r2", "order_divergence", "recon_mse"} <= set(ev)


def test_pendulum_fit(tmp_path):
    sets = [
        "data.synthetic=pendulum",
        "data.n=96",
        "data.image_size=16",
        "model.latent_dim=4",
        "train.reorder=true",
    ]
    args = [arg for s in sets for arg in ("--set", s)]
    res = runner.invoke(app, ["causal", "fit", "--out", str(tmp_path / "p"), *args, *FAST])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["n_latents_true"] == 4
    assert json.loads((tmp_path / "p" / "model.json").read_text())["config"]["train"]["reorder"] is True
    no_warmup = ["--set", "train.warmup_epochs=0"]
    res = runner.invoke(app, ["causal", "fit", "--out", str(tmp_path / "q"), *args, *FAST, *no_warmup])
    assert res.exit_code == 2 and "reorder" in res.output
    assert not (tmp_path / "q").exists()


def test_bad_input_exits_2_without_output(tmp_path):
    data = tmp_path / "anm"
    runner.invoke(app, ["causal", "synth-anm", "--out", str(data), "--set", "n=100", "--set", "d=4",
                        "--set", "observed_dim=8", "--quiet"])  # fmt: skip
    # d (4 true latents) larger than the latent size (2)
    res = runner.invoke(app, ["causal", "fit", "--out", str(tmp_path / "r1"), "--set", f"data.path={data}",
                              "--set", "model.latent_dim=2", *FAST])  # fmt: skip
    assert res.exit_code == 2 and "latent" in res.output
    assert not (tmp_path / "r1").exists()
    x = np.load(data / "x.npy")
    x[3, 3] = np.nan
    np.save(data / "x.npy", x)
    res = runner.invoke(
        app, ["causal", "fit", "--out", str(tmp_path / "r2"), "--set", f"data.path={data}", *FAST]
    )
    assert res.exit_code == 2 and "NaN" in res.output
    assert not (tmp_path / "r2").exists()
    res = runner.invoke(app, ["causal", "eval", "--out", str(tmp_path / "r3"), "--set", f"data={data}"])
    assert res.exit_code == 2 and "model" in res.output
    res = runner.invoke(app, ["causal", "fit", "--out", str(tmp_path / "r4"), "--set", "train.alpah=1"])
    assert res.exit_code == 2 and "did you mean 'train.alpha'" in res.output
    res = runner.invoke(
        app, ["causal", "fit", "--out", str(tmp_path / "r5"), "--set", "train.criterion=leaf"]
    )
    assert res.exit_code == 2 and "criterion" in res.output
    assert not (tmp_path / "r5").exists()


def test_eval_takes_model_and_data_options(tmp_path):
    data = tmp_path / "anm"
    res = runner.invoke(app, ["causal", "synth-anm", "--out", str(data), "--set", "n=160", "--set", "d=2",
                              "--set", "observed_dim=4", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    res = runner.invoke(app, ["causal", "fit", "--out", str(run), "--set", f"data.path={data}",
                              "--set", "model.latent_dim=2", *FAST])  # fmt: skip
    assert res.exit_code == 0, res.output
    by_flag = tmp_path / "flag"
    res = runner.invoke(
        app, ["causal", "eval", "--model", str(run), "--data", str(data), "--out", str(by_flag)]
    )
    assert res.exit_code == 0, res.output
    by_key = tmp_path / "key"
    res = runner.invoke(app, ["causal", "eval", "--set", f"model={run}", "--set", f"data={data}",
                              "--out", str(by_key), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (by_flag / "metrics.json").read_text() == (by_key / "metrics.json").read_text()
    res = runner.invoke(app, ["causal", "eval", "--model", str(tmp_path / "none"), "--data", str(data),
                              "--out", str(tmp_path / "bad")])  # fmt: skip
    assert res.exit_code == 2 and "model.json" in res.output and not (tmp_path / "bad").exists()


def test_fit_trains_with_the_library_defaults(tmp_path):
    from trustmed.causal import AlphaSchedule, CausalTrainConfig

    data = tmp_path / "anm"
    runner.invoke(app, ["causal", "synth-anm", "--out", str(data), "--set", "n=200", "--set", "d=2",
                        "--set", "observed_dim=4", "--quiet"])  # fmt: skip
    defaults = CausalTrainConfig()
    epochs = defaults.warmup_epochs + defaults.ramp_epochs + 1
    run = tmp_path / "run"
    sets = [f"data.path={data}", "model.latent_dim=2", "model.hidden=8", f"train.epochs={epochs}",
            "train.batch_size=32"]  # fmt: skip
    res = runner.invoke(
        app, ["causal", "fit", "--out", str(run), *[a for s in sets for a in ("--set", s)], "-q"]
    )
    assert res.exit_code == 0, res.output
    recorded = json.loads((run / "model.json").read_text())["config"]["train"]
    assert recorded == defaults.model_copy(update={"epochs": epochs, "batch_size": 32}).model_dump(
        mode="json"
    )
    steps = 160 // 32  # 200 samples, 20 % for validation
    schedule = AlphaSchedule(defaults.alpha, defaults.warmup_epochs * steps, defaults.ramp_epochs * steps)
    expected = [[schedule.step() for _ in range(steps)][-1] for _ in range(epochs)]
    assert pd.read_csv(run / "history.csv")["alpha"].tolist() == pytest.approx(expected)

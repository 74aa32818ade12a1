"""``trustmed debias run | compare | apply-thresholds`` on a tiny SynthSkin, and their bad-input paths."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.data.synth.skin import generate_synthskin
from trustmed.models import ModelSpec, build_model, load_checkpoint, save_checkpoint

runner = CliRunner()
FAST = ["--set", "epochs=1", "--set", "n_boot=200", "--quiet"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("debias_cli")
    data = generate_synthskin(
        root / "skin", seed=0, image_size=16, n_train=48, n_val=40, n_external=40, n_test=40, n_ood=0
    )
    torch.manual_seed(0)
    spec = ModelSpec(arch="tiny_cnn", image_size=16, width=4)
    config = {"data": {"dataset": "fitzpatrick17k", "root": str(data)}, "optim": {"epochs": 1}}
    ckpt = save_checkpoint(build_model(spec), spec, root / "erm", config=config)
    return root, data, ckpt


def test_debias_is_a_group_of_run_compare_and_apply_thresholds():
    result = runner.invoke(app, ["debias", "--help"])
    assert result.exit_code == 0
    for word in ("run", "compare", "apply-thresholds"):
        assert word in result.output, word
    assert "--method" not in result.output
    result = runner.invoke(app, ["debias", "run", "--help"])
    assert result.exit_code == 0
    for word in ("--method", "--checkpoint", "--external", "--attribute", "swift", "group_thresholds"):
        assert word in result.output, word


def test_single_method_writes_checkpoint_predictions_and_audits(workspace):
    root, data, ckpt = workspace
    out = root / "swift_run"
    args = [
        "debias",
        "run",
        "--method",
        "swift",
        "--checkpoint",
        str(ckpt),
        "--external",
        str(data),
        "--attribute",
        "skin_tone",
        "--out",
        str(out),
        "--set",
        "params.batch_size=16",
        *FAST,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in (
        "model.safetensors",
        "model.json",
        "predictions_test.csv",
        "predictions_before_test.csv",
        "audit_before/test/metrics.json",
        "audit_after/test/metrics.json",
        "debias.json",
        "history.json",
    ):
        assert (out / name).is_file(), name
    debiased, _, meta = load_checkpoint(out)
    original, _, _ = load_checkpoint(ckpt)
    assert not torch.equal(debiased.head.weight, original.head.weight)
    assert meta["debias"]["method"] == "swift" and meta["debias"]["cost"]["epochs"] == 2
    after = json.loads((out / "audit_after/test/metrics.json").read_text())
    assert set(after["groups"]) == {"light", "dark"} and "eodds_mean_gap" in after["gaps"]
    preds = pd.read_csv(out / "predictions_test.csv")
    assert {"sample_id", "label", "score", "skin_tone", "split"} <= set(preds.columns)


def test_group_thresholds_run_saves_thresholds_that_reproduce_its_decisions(workspace):
    from trustmed.debias.thresholds import GroupThresholds

    root, data, ckpt = workspace
    out = root / "thresholds_run"
    args = [
        "debias",
        "run",
        "--method",
        "group_thresholds",
        "--checkpoint",
        str(ckpt),
        "--external",
        str(data),
    ]
    result = runner.invoke(app, [*args, "--attribute", "skin_tone", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "debias.json").read_text())
    assert summary["needs_attribute_at_prediction"] and summary["thresholds_file"] == "group_thresholds.json"
    thresholds = GroupThresholds.load(out / summary["thresholds_file"])
    assert thresholds.groups_ == ["dark", "light"]
    before = pd.read_csv(out / "predictions_before_test.csv")
    after = pd.read_csv(out / "predictions_test.csv").set_index("sample_id")
    p = thresholds.probability(before["score"].to_numpy(), before["skin_tone"].to_numpy())
    decided = after.loc[before["sample_id"], "score"].to_numpy()
    # every written decision is one the saved thresholds allow: 1 only where P(1) > 0, 0 only where P(1) < 1
    assert ((decided == 1) <= (p > 0)).all() and ((decided == 0) <= (p < 1)).all()
    assert set(np.unique(decided)) <= {0.0, 1.0}
    # the saved thresholds applied to a predictions CSV from the command line
    applied_csv = root / "applied.csv"
    apply = ["debias", "apply-thresholds", str(out / "group_thresholds.json"), "--out", str(applied_csv)]
    result = runner.invoke(app, [*apply, "--predictions", str(out / "predictions_before_test.csv")])
    assert result.exit_code == 0, result.output
    applied = pd.read_csv(applied_csv)
    np.testing.assert_allclose(applied["p_decision"], p, atol=1e-12)
    assert set(applied["decision"]) <= {0, 1} and len(applied) == len(before)
    broken = root / "broken.csv"
    before.assign(score=["x"] + before["score"].tolist()[1:]).to_csv(broken, index=False)
    bad_out = root / "applied_bad.csv"
    bad = runner.invoke(
        app,
        [
            "debias",
            "apply-thresholds",
            str(out / "group_thresholds.json"),
            "--out",
            str(bad_out),
            "--predictions",
            str(broken),
        ],
    )
    assert bad.exit_code == 2 and "row 2" in bad.output and not bad_out.exists()
    no_attr = root / "no_attr.csv"
    before.drop(columns="skin_tone").to_csv(no_attr, index=False)
    bad = runner.invoke(
        app,
        [
            "debias",
            "apply-thresholds",
            str(out / "group_thresholds.json"),
            "--out",
            str(bad_out),
            "--predictions",
            str(no_attr),
        ],
    )
    assert bad.exit_code == 2 and "'skin_tone' not found" in bad.output and not bad_out.exists()


def test_compare_writes_table_and_pareto(workspace):
    root, data, ckpt = workspace
    out = root / "compare_run"
    args = [
        "debias",
        "compare",
        "--checkpoint",
        str(ckpt),
        "--external",
        str(data),
        "--out",
        str(out),
        "--set",
        "quick=true",
        "--set",
        "methods=[erm,swift,fairprune,group_thresholds]",
        "--set",
        "eval_splits=[test]",
        *FAST,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "comparison.csv")
    assert set(table["method"]) == {"erm", "swift", "fairprune", "group_thresholds"}
    for col in ("auc_lo", "eodds_mean_gap_hi", "worst_group_auc", "wall_time_s", "samples_seen", "epochs"):
        assert col in table.columns, col
    assert (out / "pareto_test_0.5.png").stat().st_size > 1000
    assert (out / "pareto_test_tuned.png").is_file()


def _expect_error(args, out, match):
    result = runner.invoke(app, [*args, "--out", str(out), *FAST])
    assert result.exit_code == 2, result.output
    assert match in result.output
    assert not out.exists()


def test_external_set_with_a_single_group_is_rejected(workspace, tmp_path):
    root, data, ckpt = workspace
    from trustmed.data import load_dataset

    manifest = load_dataset("fitzpatrick17k", data)
    manifest["path"] = [str(data / p) for p in manifest["path"]]
    manifest.loc[manifest["split"] == "external", "skin_tone"] = "light"
    csv = tmp_path / "manifest.csv"
    manifest.to_csv(csv, index=False)
    args = ["debias", "run", "--checkpoint", str(ckpt), "--external", str(csv), "--attribute", "skin_tone"]
    _expect_error(args, tmp_path / "out", "single group")


def test_external_set_with_a_single_class_is_rejected(workspace, tmp_path):
    root, data, ckpt = workspace
    from trustmed.data import load_dataset

    manifest = load_dataset("fitzpatrick17k", data)
    manifest["path"] = [str(data / p) for p in manifest["path"]]
    manifest = manifest[(manifest["split"] != "external") | (manifest["label"] == 1)]
    csv = tmp_path / "manifest.csv"
    manifest.to_csv(csv, index=False)
    args = ["debias", "run", "--checkpoint", str(ckpt), "--external", str(csv), "--attribute", "skin_tone"]
    _expect_error(args, tmp_path / "out", "both classes")


def test_missing_attribute_is_rejected(workspace, tmp_path):
    _, data, ckpt = workspace
    args = ["debias", "run", "--checkpoint", str(ckpt), "--external", str(data), "--attribute", "ethnicity"]
    _expect_error(args, tmp_path / "out", "'ethnicity' not found")


def test_checkpoint_not_matching_its_model_json_is_rejected(workspace, tmp_path):
    _, data, ckpt = workspace
    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    payload = json.loads((ckpt / "model.json").read_text())
    payload["spec"]["width"] = 8
    (bad / "model.json").write_text(json.dumps(payload))
    args = ["debias", "run", "--checkpoint", str(bad), "--external", str(data), "--attribute", "skin_tone"]
    _expect_error(args, tmp_path / "out", "do not match")
    _expect_error(
        ["debias", "compare", "--checkpoint", str(bad), "--external", str(data)],
        tmp_path / "out2",
        "do not match",
    )


def test_example_configs_load():
    from pathlib import Path

    from trustmed.config import load_config
    from trustmed.debias.run import DebiasCompareConfig
    from trustmed.debias.selection import check_plan

    examples = sorted((Path(__file__).parents[2] / "examples").glob("debias_*.yaml"))
    assert len(examples) == 5
    for path in examples:
        cfg = load_config(DebiasCompareConfig, path)
        # the data is the checkpoint's unless the example names it
        assert cfg.attribute and (cfg.data.root is not None or cfg.checkpoint is not None)
        check_plan(cfg.methods or [], cfg.grids)  # every method and grid parameter is a registered one


def test_unknown_method_parameter_is_named_with_the_valid_ones(workspace, tmp_path):
    _, data, ckpt = workspace
    args = [
        "debias",
        "run",
        "--checkpoint",
        str(ckpt),
        "--external",
        str(data),
        "--set",
        "params.lr_forgt=0.1",
    ]
    _expect_error(args, tmp_path / "out", "unknown parameter 'lr_forgt' of method 'swift'; valid: ")
    _expect_error(
        [*args[:2], "--method", "nope", *args[2:6]], tmp_path / "out", "unknown debiasing method 'nope'"
    )


def _manifest_with_unknown(data, tmp_path):
    """The workspace's data as a manifest CSV with some rows of unknown tone (one of them missing)
    in the external and test splits."""
    from trustmed.data import load_dataset

    manifest = load_dataset("fitzpatrick17k", data)
    manifest["path"] = [str(data / p) for p in manifest["path"]]
    test_rows = manifest.index[manifest["split"] == "test"]
    external_rows = manifest.index[manifest["split"] == "external"]
    manifest.loc[test_rows[:5], "skin_tone"] = "unknown"
    manifest.loc[external_rows[:6], "skin_tone"] = "unknown"
    manifest.loc[test_rows[5], "skin_tone"] = None
    csv = tmp_path / "manifest.csv"
    manifest.to_csv(csv, index=False)
    return csv, len(test_rows), len(external_rows)


def test_rows_with_unknown_attribute_are_reported_as_an_excluded_group(workspace, tmp_path):
    from trustmed.audit import read_predictions, run_audit
    from trustmed.io import write_json

    root, data, ckpt = workspace
    csv, n_test, n_external = _manifest_with_unknown(data, tmp_path)
    out = tmp_path / "out"
    args = [
        "debias",
        "run",
        "--method",
        "group_thresholds",
        "--checkpoint",
        str(ckpt),
        "--external",
        str(csv),
    ]
    result = runner.invoke(app, [*args, "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "debias.json").read_text())
    assert summary["n_fit"] == n_external - 6 and summary["include_unknown"] is False  # fitted on known rows
    assert summary["notes"] == [
        "test: 6 rows of unknown skin_tone scored by the unchanged model's decision at 0.5 "
        "(the method has no rule for an unknown group)"
    ]
    before = pd.read_csv(out / "predictions_before_test.csv")
    after = pd.read_csv(out / "predictions_test.csv")
    assert len(before) == len(after) == n_test  # every row is predicted and audited
    assert before["sample_id"].tolist() == after["sample_id"].tolist()
    for when, table in (("before", "predictions_before_test.csv"), ("after", "predictions_test.csv")):
        metrics = json.loads((out / f"audit_{when}/test/metrics.json").read_text())
        assert metrics["groups"]["unknown"]["n"] == 6 and metrics["groups"]["unknown"]["excluded_from_gaps"]
        # the same predictions audited by `trustmed audit` give the same report
        audited = run_audit(
            read_predictions(out / table),
            group_cols=["skin_tone"],
            patient_col="patient_id",
            threshold=0.5,
            n_boot=200,
            figures=False,
        ).metrics
        # compared as written (NaN is null in JSON)
        audited = json.loads(write_json(tmp_path / f"audited_{when}.json", audited).read_text())
        assert metrics["gaps"] == audited["gaps"] and metrics["groups"] == audited["groups"], when
    # --include-unknown: fitted on every external row, the unknown group counts in the gaps
    counted = tmp_path / "counted"
    result = runner.invoke(app, [*args, "--include-unknown", "--out", str(counted), *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads((counted / "debias.json").read_text())
    assert summary["n_fit"] == n_external and summary["notes"] == [] and summary["include_unknown"] is True
    metrics = json.loads((counted / "audit_before/test/metrics.json").read_text())
    assert metrics["groups"]["unknown"]["excluded_from_gaps"] is False


def _constant_checkpoint(root, data):
    """A checkpoint whose every score is sigmoid(-5): a constant classifier."""
    spec = ModelSpec(arch="tiny_cnn", image_size=16, width=4)
    model = build_model(spec)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-5.0)
    config = {"data": {"dataset": "fitzpatrick17k", "root": str(data)}, "optim": {"epochs": 1}}
    return save_checkpoint(model, spec, root / "constant", config=config)


def test_constant_predictions_are_flagged_in_the_tables_and_json(workspace, tmp_path):
    root, data, _ = workspace
    ckpt = _constant_checkpoint(tmp_path, data)
    reason = "constant predictions (all negative, balanced accuracy 0.500)"
    base = ["--checkpoint", str(ckpt), "--external", str(data), "--set", "epochs=1", "--set", "n_boot=200"]
    compare = ["debias", "compare", *base, "--set", "methods=[erm,fairprune]", "--set", "eval_splits=[test]"]
    result = runner.invoke(app, [*compare, "--set", "quick=true", "--out", str(tmp_path / "compare")])
    assert result.exit_code == 0, result.output
    assert "0.000 ⚠ constant" in result.stdout and f"⚠ erm: {reason}" in result.stdout
    summary = json.loads((tmp_path / "compare" / "summary.json").read_text())
    assert summary["flags"]["erm"]["test"]["0.5"] == reason
    assert summary["flags"]["erm"]["test"]["tuned"].startswith("constant predictions")
    table = pd.read_csv(tmp_path / "compare" / "comparison.csv")
    assert (table["flag"].str.contains("constant")).all()
    run = ["debias", "run", "--method", "fairprune", *base, "--out", str(tmp_path / "run")]
    result = runner.invoke(app, run)
    assert result.exit_code == 0, result.output
    assert "0.000 ⚠" in result.stdout and f"⚠ test after (constant): {reason}" in result.stdout
    summary = json.loads((tmp_path / "run" / "debias.json").read_text())
    assert summary["flags"]["test"] == {"before": reason, "after": reason}
    after = json.loads((tmp_path / "run" / "audit_after/test/metrics.json").read_text())
    assert after["degenerate"]["reason"] == reason


def test_external_fraction_of_the_recorded_training_set(workspace, tmp_path):
    root, data, ckpt = workspace
    model, spec, meta = load_checkpoint(ckpt)
    sized = save_checkpoint(model, spec, tmp_path / "sized", config=meta["config"], training={"n_train": 400})
    base = [
        "debias",
        "run",
        "--method",
        "fairprune",
        "--external",
        str(data),
        "--set",
        "external_fraction=0.05",
    ]
    result = runner.invoke(app, [*base, "--checkpoint", str(sized), "--out", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "debias.json").read_text())["n_fit"] == 20
    _expect_error([*base, "--checkpoint", str(ckpt)], tmp_path / "out2", "external_fraction needs")


def test_a_registered_method_runs_from_the_command_line(workspace, tmp_path):
    from trustmed.debias.fairprune import FairPrune
    from trustmed.debias.registry import METHODS, Method, register

    root, data, ckpt = workspace
    register(Method("prune_half", FairPrune, grid=({"prune_ratio": 0.5},)))
    try:
        base = ["--checkpoint", str(ckpt), "--external", str(data)]
        result = runner.invoke(
            app, ["debias", "run", "--method", "prune_half", *base, "--out", str(tmp_path / "run"), *FAST]
        )
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "run" / "debias.json").read_text())["method"] == "prune_half"
        compare = [
            "debias",
            "compare",
            *base,
            "--set",
            "methods=[erm,prune_half]",
            "--set",
            "eval_splits=[test]",
        ]
        result = runner.invoke(app, [*compare, "--out", str(tmp_path / "compare"), *FAST])
        assert result.exit_code == 0, result.output
        table = pd.read_csv(tmp_path / "compare" / "comparison.csv")
        assert set(table["method"]) == {"erm", "prune_half"}
        assert set(table.loc[table["method"] == "prune_half", "params"]) == {"prune_ratio=0.5"}
    finally:
        METHODS.pop("prune_half")

"""Every file of every checkpoint and resume folder, missing, truncated or replaced by random bytes, for
every command that reads it: exit 0 with a complete ``--out``, or exit 2 with one line naming the file
and nothing written — never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
from _matrix import (
    CHECKPOINT_COMMANDS,
    GROUND_FAST,
    check_outcome,
    checkpoint_command,
    copy_of,
    distill_args,
    ground_run,
    invoke,
    sets,
    snapshot,
    train_args,
)

pytestmark = pytest.mark.slow

DAMAGES = ("missing", "truncated", "random_bytes")
CLASSIFIER_FILES = ("model.safetensors", "model.json")
EPOCH_FILES = ("model", "optimizer", "rng_0", "stateful_0", "best")
TRAIN_RESUME = ("loop_state.json", *(f"epoch_0002/{f}.safetensors" for f in (*EPOCH_FILES, "scheduler")))
DISTILL_RESUME = ("loop_state.json", *(f"epoch_0002/{f}.safetensors" for f in EPOCH_FILES))
LDM_FILES = (
    "configs/inference.json",
    "models/autoencoder.safetensors",
    "models/diffusion_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
)
PROMPT_FILES = ("prompt.safetensors", "prompt.json")


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(np.random.default_rng(len(data)).bytes(max(len(data), 16)))


def names_of(rel: str) -> tuple[str, ...]:
    """What a message may name the damaged file by: its name, or (for a file of a Hugging Face folder,
    which transformers reads as a whole) its folder."""
    parts = rel.split("/")
    return (parts[-1],) if len(parts) == 1 or parts[0] not in ("text_encoder", "tokenizer") else (parts[0],)


def _cases(files, commands):
    return [pytest.param(f, c, d, id=f"{c}-{f}-{d}") for f in files for c in commands for d in DAMAGES]


def test_the_matrix_lists_every_file(classifier, distilled, causal, ldm, prompt):
    """The lists above are every file each artefact has (so "every file" stays true when one is added)."""

    def files(folder, under=""):
        base = folder / under if under else folder
        return {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()}

    assert files(classifier, "checkpoints") == set(TRAIN_RESUME)
    assert files(distilled, "checkpoints") == set(DISTILL_RESUME)
    assert {"model.safetensors", "model.json"} <= files(classifier) and files(causal[1]) >= set(
        CLASSIFIER_FILES
    )
    assert files(ldm) == set(LDM_FILES) and files(prompt) == set(PROMPT_FILES)


@pytest.mark.parametrize("name, command, how", _cases(CLASSIFIER_FILES, CHECKPOINT_COMMANDS))
def test_damaged_classifier_checkpoint(
    name, command, how, classifier, distilled, skin, groups_data, tmp_path
):
    source = distilled if command == "teacher" else classifier
    ckpt = copy_of(source, tmp_path / "ckpt")
    damage(ckpt / name, how)
    out = tmp_path / "out"
    result = invoke(*checkpoint_command(command, ckpt, skin, groups_data, out))
    check_outcome(result, out, category=f"checkpoint: {command}", case=f"{name} {how}", names=(name,))


@pytest.mark.parametrize(
    "name, command, how", _cases(TRAIN_RESUME, ("train",)) + _cases(DISTILL_RESUME, ("distill",))
)
def test_damaged_resume_folder(name, command, how, classifier, distilled, skin, groups_data, tmp_path):
    out = copy_of(classifier if command == "train" else distilled, tmp_path / "run")
    damage(out / "checkpoints" / name, how)
    before = snapshot(out)
    if command == "train":
        args = [*train_args(skin, out), "--resume"]
    else:
        args = [*distill_args(groups_data, out, "--method", "groupdro"), "--resume"]
    result = invoke(*args)
    check_outcome(
        result, out, category=f"resume: {command}", case=f"{name} {how}", names=names_of(name), before=before
    )


@pytest.mark.parametrize("command", ["train", "distill"])
def test_missing_epoch_folder(command, classifier, distilled, skin, groups_data, tmp_path):
    import shutil

    out = copy_of(classifier if command == "train" else distilled, tmp_path / "run")
    shutil.rmtree(out / "checkpoints" / "epoch_0002")
    before = snapshot(out)
    args = (
        train_args(skin, out)
        if command == "train"
        else distill_args(groups_data, out, "--method", "groupdro")
    )
    result = invoke(*args, "--resume")
    check_outcome(result, out, category=f"resume: {command}", case="epoch folder missing",
                  names=("epoch_0002",), before=before)  # fmt: skip


@pytest.mark.parametrize("name, how", [(n, d) for n in CLASSIFIER_FILES for d in DAMAGES])
def test_damaged_causal_model(name, how, causal, tmp_path):
    data, model = causal
    model = copy_of(model, tmp_path / "model")
    damage(model / name, how)
    out = tmp_path / "out"
    result = invoke("causal", "eval", "--out", out, "--quiet", *sets([f"model={model}", f"data={data}"]))
    check_outcome(result, out, category="checkpoint: causal eval", case=f"{name} {how}", names=(name,))


@pytest.mark.parametrize("name, command, how", _cases(LDM_FILES, ("run", "eval", "tune")))
def test_damaged_ldm_folder(name, command, how, ldm, cxr_image, tmp_path):
    model = copy_of(ldm, tmp_path / "model")
    damage(model / name, how)
    out = tmp_path / "out"
    eval_sets = ["data.n_images=4", "data.limit=2", "n_boot=0", "n_cases=1", *GROUND_FAST]
    args = {
        "run": ground_run(model, cxr_image, out),
        "eval": ["ground", "eval", "--model", model, *sets(eval_sets), "--out", out, "--quiet"],
        "tune": ["ground", "tune", "--model", model, *sets(["data.n_images=4", "prompt.epochs=1",
                 "prompt.batch_size=2"]), "--out", out, "--quiet"],
    }[command]  # fmt: skip
    result = invoke(*args)
    expect = {"run": ("heatmap.npy",), "eval": ("metrics.json",), "tune": ("prompt.safetensors",)}[command]
    check_outcome(
        result,
        out,
        category=f"model folder: ground {command}",
        case=f"{name} {how}",
        names=names_of(name),
        expect=expect,
    )


@pytest.mark.parametrize("name, how", [(n, d) for n in PROMPT_FILES for d in DAMAGES])
def test_damaged_tuned_prompt(name, how, ldm, prompt, cxr_image, tmp_path):
    tuned = copy_of(prompt, tmp_path / "prompt")
    damage(tuned / name, how)
    out = tmp_path / "out"
    result = invoke(*ground_run(ldm, cxr_image, out, "--prompt-tuning", tuned))
    check_outcome(result, out, category="tuned prompt: ground run", case=f"{name} {how}", names=(name,))


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_group_thresholds(how, thresholds, classifier, tmp_path):
    rules = copy_of(thresholds, tmp_path / "group_thresholds.json")
    damage(rules, how)
    out = tmp_path / "decisions.csv"
    args = ["debias", "apply-thresholds", rules, "--predictions", classifier / "predictions_test.csv"]
    result = invoke(*args, "--out", out, "--quiet")
    check_outcome(result, out, category="thresholds: apply-thresholds", case=how, names=(rules.name,))


def test_undamaged_resume_folder_resumes(classifier, skin, tmp_path):
    """The control: the same resume folder undamaged is read and used, so the cases above fail by their
    damage. All epochs are done, so resuming restores the selected epoch's weights exactly."""
    out = copy_of(classifier, tmp_path / "run")
    result = invoke(*train_args(skin, out), "--resume")
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").read_bytes() == (classifier / "model.safetensors").read_bytes()


CAUSAL_DATA_FILES = ("x.npy", "z.npy", "adjacency.csv", "meta.json")


@pytest.mark.parametrize("name, command, how", _cases(CAUSAL_DATA_FILES, ("fit", "eval")))
def test_damaged_causal_data(name, command, how, causal, tmp_path):
    data, model = causal
    data = copy_of(data, tmp_path / "data")
    damage(data / name, how)
    out = tmp_path / "out"
    if command == "fit":
        args = ["causal", "fit", *sets([f"data.path={data}", "train.epochs=1", "model.latent_dim=3"])]
    else:
        args = ["causal", "eval", *sets([f"model={model}", f"data={data}"])]
    result = invoke(*args, "--out", out, "--quiet")
    expect = ("model.safetensors",) if command == "fit" else ("metrics.json",)
    check_outcome(
        result, out, category=f"data: causal {command}", case=f"{name} {how}", names=(name,), expect=expect
    )


@pytest.mark.parametrize(
    "content",
    ['{"kind": "covae"}', '{"kind": "covae", "architecture": [1, 2]}', "[]", '{"kind": "vae"}'],
)
def test_malformed_causal_model_json(content, causal, tmp_path):
    data, model = causal
    model = copy_of(model, tmp_path / "model")
    (model / "model.json").write_text(content)
    out = tmp_path / "out"
    result = invoke("causal", "eval", "--out", out, "--quiet", *sets([f"model={model}", f"data={data}"]))
    check_outcome(result, out, category="checkpoint: causal eval", case=f"model.json {content}",
                  names=("model.json",))  # fmt: skip

"""No command ever runs a pickle: a payload planted in any checkpoint, resume or model folder is not
executed (it would create a marker file), and the command stops with exit 2 naming the file."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from _matrix import (
    CHECKPOINT_COMMANDS,
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


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker, *, torch_format: bool = False) -> None:
    """Write a pickle payload to ``path``: a plain pickle, or PyTorch's zip format (``torch.save``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if torch_format:
        torch.save({"weight": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"state": Payload(marker)}))


def _check(result, out, marker, name, category, before=None):
    assert not marker.exists(), f"the payload {name} ran"
    check_outcome(result, out, category=category, case=f"planted {name}", names=(name,), before=before)
    assert result.exit_code == 2, f"{name}: a planted payload must stop the command"


@pytest.mark.parametrize(
    "planted",
    [
        "epoch_0002/custom_checkpoint_0.pkl",  # accelerate's name for registered objects
        "epoch_0002/optimizer.bin",
        "epoch_0002/random_states_0.pkl",
        "best.pt",
    ],
)
@pytest.mark.parametrize("command", ["train", "distill"])
def test_resume_never_unpickles(command, planted, classifier, distilled, skin, groups_data, tmp_path):
    out = copy_of(classifier if command == "train" else distilled, tmp_path / "run")
    marker = tmp_path / "PWNED"
    plant(out / "checkpoints" / planted, marker, torch_format=planted.endswith((".bin", ".pt")))
    before = snapshot(out)
    args = (
        train_args(skin, out)
        if command == "train"
        else distill_args(groups_data, out, "--method", "groupdro")
    )
    result = invoke(*args, "--resume")
    _check(result, out, marker, planted.split("/")[-1], f"pickles: {command} --resume", before)


def test_resume_state_file_replaced_by_a_pickle(classifier, skin, tmp_path):
    out = copy_of(classifier, tmp_path / "run")
    marker = tmp_path / "PWNED"
    plant(out / "checkpoints" / "epoch_0002" / "optimizer.safetensors", marker, torch_format=True)
    before = snapshot(out)
    result = invoke(*train_args(skin, out), "--resume")
    _check(result, out, marker, "optimizer.safetensors", "pickles: train --resume", before)


def test_checkpoint_in_the_old_pickle_format_is_refused(classifier, skin, tmp_path):
    """A resume folder as accelerate's ``save_state`` wrote it (trustmed's earlier format)."""
    out = copy_of(classifier, tmp_path / "run")
    ckpt = out / "checkpoints"
    marker = tmp_path / "PWNED"
    shutil.rmtree(ckpt / "epoch_0002")
    plant(ckpt / "epoch_0002" / "optimizer.bin", marker, torch_format=True)
    plant(ckpt / "epoch_0002" / "random_states_0.pkl", marker)
    state = json.loads((ckpt / "loop_state.json").read_text())
    state.pop("format")
    (ckpt / "loop_state.json").write_text(json.dumps(state))
    before = snapshot(out)
    result = invoke(*train_args(skin, out), "--resume")
    _check(result, out, marker, "loop_state.json", "pickles: train --resume", before)
    assert "older format" in result.stderr


@pytest.mark.parametrize("planted", ["model.pt", "pytorch_model.bin", "model.safetensors"])
@pytest.mark.parametrize("command", CHECKPOINT_COMMANDS)
def test_checkpoint_folders_never_unpickle(
    command, planted, classifier, distilled, skin, groups_data, tmp_path
):
    ckpt = copy_of(distilled if command == "teacher" else classifier, tmp_path / "ckpt")
    marker = tmp_path / "PWNED"
    plant(ckpt / planted, marker, torch_format=planted != "model.safetensors")
    out = tmp_path / "out"
    result = invoke(*checkpoint_command(command, ckpt, skin, groups_data, out))
    _check(result, out, marker, planted, f"pickles: {command} --checkpoint")


def test_causal_model_folder_never_unpickles(causal, tmp_path):
    data, model = causal
    model = copy_of(model, tmp_path / "model")
    marker = tmp_path / "PWNED"
    plant(model / "model.pkl", marker)
    out = tmp_path / "out"
    result = invoke("causal", "eval", "--out", out, "--quiet", *sets([f"model={model}", f"data={data}"]))
    _check(result, out, marker, "model.pkl", "pickles: causal eval")


@pytest.mark.parametrize(
    "planted, removed",
    [
        ("models/autoencoder.pt", "models/autoencoder.safetensors"),
        ("models/diffusion_model.pth", "models/diffusion_model.safetensors"),
        ("text_encoder/pytorch_model.bin", "text_encoder/model.safetensors"),
    ],
)
def test_model_folder_weights_are_read_weights_only(planted, removed, ldm, cxr_image, tmp_path):
    model = copy_of(ldm, tmp_path / "model")
    marker = tmp_path / "PWNED"
    (model / removed).unlink()
    plant(model / planted, marker, torch_format=True)
    out = tmp_path / "out"
    result = invoke(*ground_run(model, cxr_image, out))
    name = planted.split("/")[-1] if planted.startswith("models") else "text_encoder"
    _check(result, out, marker, name, "pickles: ground model folder")


def test_tuned_prompt_folder_never_unpickles(ldm, prompt, cxr_image, tmp_path):
    tuned = copy_of(prompt, tmp_path / "prompt")
    marker = tmp_path / "PWNED"
    plant(tuned / "prompt.pt", marker, torch_format=True)
    out = tmp_path / "out"
    result = invoke(*ground_run(ldm, cxr_image, out, "--prompt-tuning", tuned))
    _check(result, out, marker, "prompt.pt", "pickles: tuned prompt")

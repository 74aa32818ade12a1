"""Weights from local files: torchvision / MONAI / factory key formats, pretrained starts, mismatches."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from safetensors.torch import save_file

from trustmed.errors import InputError
from trustmed.models import ModelSpec, build_model, load_checkpoint, save_checkpoint

XRV_LABELS = [f"label_{i}" for i in range(18)]


def _torchvision_densenet(
    state: dict[str, torch.Tensor], *, old_names: bool = False
) -> dict[str, torch.Tensor]:
    """trustmed's densenet121 keys written back in torchvision's format (as a user's file has them)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("extractor.")
        if key.startswith("head."):
            key = "classifier." + key[len("head.") :]
        match = re.match(r"^(.*denselayer\d+)\.layers\.(norm|relu|conv)([12])\.(.*)$", key)
        if match:
            sep = "." if old_names else ""
            key = f"{match[1]}.{match[2]}{sep}{match[3]}.{match[4]}"
        out[key] = value.clone()
    return out


def _torchvision_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        ("fc." + k[5:] if k.startswith("head.") else k.removeprefix("extractor.")): v.clone()
        for k, v in state.items()
    }


def _perturbed(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (v + 0.01 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize("old_names", [False, True])
def test_a_chest_xray_densenet_state_dict_with_18_outputs_loads_with_an_output_name(tmp_path, old_names):
    spec = ModelSpec(arch="densenet121", in_channels=1, image_size=32, n_outputs=18)
    source = build_model(spec)
    source.load_state_dict(_perturbed(source, 0))
    path = tmp_path / "xrv-densenet.pt"
    torch.save(_torchvision_densenet(source.state_dict(), old_names=old_names), path)
    loaded = build_model(
        spec.model_copy(update={"weights": path, "output_index": "label_7", "output_names": XRV_LABELS})
    ).eval()
    x = torch.rand(2, 1, 32, 32)
    assert loaded.output_index == 7
    assert torch.allclose(loaded.all_logits(x), source.eval().all_logits(x), atol=1e-5)
    assert torch.allclose(loaded(x), source.all_logits(x)[:, 7], atol=1e-5)


def test_a_torchvision_resnet_state_dict_loads_key_for_key(tmp_path):
    spec = ModelSpec(arch="resnet18", in_channels=3, image_size=32, n_outputs=4)
    source = build_model(spec)
    source.load_state_dict(_perturbed(source, 1))
    path = tmp_path / "resnet18.safetensors"
    save_file(_torchvision_resnet(source.state_dict()), path)
    loaded = build_model(spec.model_copy(update={"weights": path, "output_index": 2})).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), source.eval().all_logits(x)[:, 2], atol=1e-5)


def test_an_imagenet_start_maps_the_backbone_and_keeps_a_fresh_head(tmp_path):
    imagenet = build_model(ModelSpec(arch="resnet18", in_channels=3, image_size=32, n_outputs=1000))
    imagenet.load_state_dict(_perturbed(imagenet, 2))
    path = tmp_path / "imagenet.pth"
    torch.save(_torchvision_resnet(imagenet.state_dict()), path)
    spec = ModelSpec(arch="resnet18", in_channels=1, image_size=32, init_weights=path)
    model = build_model(spec)
    conv = model.state_dict()["extractor.conv1.weight"]
    assert torch.allclose(conv, imagenet.state_dict()["extractor.conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(
        model.state_dict()["extractor.layer4.1.bn2.weight"],
        imagenet.state_dict()["extractor.layer4.1.bn2.weight"],
    )
    assert model.head.out_features == 1
    fresh = build_model(spec.model_copy(update={"init_weights": None}))
    assert not torch.equal(
        model.state_dict()["extractor.layer1.0.conv1.weight"],
        fresh.state_dict()["extractor.layer1.0.conv1.weight"],
    )
    with pytest.raises(
        InputError, match=r"model.weights do not fit 'resnet18': .*head.weight \(1000, 512\)≠\(1, 512\)"
    ):
        build_model(spec.model_copy(update={"init_weights": None, "weights": path, "in_channels": 3}))


def test_mismatches_are_one_line_listing_the_first(tmp_path):
    spec = ModelSpec(arch="densenet121", in_channels=1, image_size=32, n_outputs=18)
    state = _torchvision_densenet(build_model(spec).state_dict())
    state["features.conv0.weight"] = torch.zeros(64, 1, 3, 3)
    state["features.extra.weight"] = torch.zeros(3)
    del state["features.norm5.bias"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(InputError) as err:
        build_model(spec.model_copy(update={"init_weights": path}))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "extractor.features.conv0.weight (64, 1, 3, 3)≠(64, 1, 7, 7)" in message
    assert "missing extractor.features.norm5.bias" in message


def test_a_pickled_object_in_a_pt_file_is_refused(tmp_path):
    import collections

    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "x": collections.Counter(a=1)}, path)
    with pytest.raises(InputError, match=str(path)):
        build_model(ModelSpec(arch="tiny_cnn", width=2, image_size=8, weights=path))


MODULE = """
import torch
from torch import nn

def build(n_outputs=3, width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, n_outputs))
"""


def test_a_factory_spec_builds_loads_user_weights_and_round_trips_a_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_nets", None)
    import user_nets

    torch.manual_seed(0)
    net = user_nets.build(n_outputs=3, width=5).eval()
    weights = tmp_path / "net.pt"
    torch.save(net.state_dict(), weights)
    spec = ModelSpec(
        factory="user_nets:build",
        kwargs={"n_outputs": 3, "width": 5},
        head="4",
        output_index=2,
        weights=weights,
        in_channels=1,
        image_size=8,
    )
    model = build_model(spec).eval()
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(model(x), net(x)[:, 2], atol=1e-6)
    save_checkpoint(model, spec, tmp_path / "ckpt", note="user model")
    weights.unlink()  # the checkpoint holds its own weights
    loaded, loaded_spec, metadata = load_checkpoint(tmp_path / "ckpt")
    assert loaded_spec.factory == "user_nets:build" and metadata["note"] == "user model"
    assert torch.allclose(loaded.eval()(x), net(x)[:, 2], atol=1e-6)
    by_file = ModelSpec(factory=f"{tmp_path / 'user_nets.py'}:build", head="4", in_channels=1, image_size=8)
    assert build_model(by_file).head.out_features == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"factory": "no_such_module_xyz:build", "head": "fc"}, "cannot import 'no_such_module_xyz'"),
        ({"factory": "torch.nn:NoSuchThing", "head": "fc"}, "has no 'NoSuchThing'"),
        ({"factory": "torch.nn:Linear", "kwargs": {"in_features": 2}, "head": "fc"}, "failed: TypeError"),
        (
            {"factory": "torch:zeros", "kwargs": {"size": [2]}, "head": "fc"},
            "returned a Tensor, not a torch module",
        ),
        ({"factory": "torch.nn:Identity", "head": "fc"}, "has no layer 'fc'; its linear layers: none"),
        ({"arch": "vgg99"}, "unknown architecture 'vgg99'"),
    ],
)
def test_bad_factory_specs_are_one_line_errors(spec, message):
    with pytest.raises(InputError, match=re.escape(message)):
        build_model(ModelSpec(**spec))


def test_a_factory_needs_a_head():
    with pytest.raises(ValueError, match="model.head is required"):
        ModelSpec(factory="torch.nn:Identity")


def test_a_spec_file_is_used_wherever_a_checkpoint_is(tmp_path):
    (tmp_path / "nets.py").write_text(MODULE)
    torch.manual_seed(1)
    spec = ModelSpec(factory=f"{tmp_path / 'nets.py'}:build", head="4", in_channels=1, image_size=8)
    net = build_model(spec).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    (tmp_path / "model.yaml").write_text(
        "model:\n  factory: nets.py:build\n  head: '4'\n  output_index: 1\n  weights: w.safetensors\n"
        "  in_channels: 1\n  image_size: 8\n"
    )
    model, loaded_spec, metadata = load_checkpoint(tmp_path / "model.yaml")
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(model.eval()(x), net.all_logits(x)[:, 1], atol=1e-6)
    assert metadata["spec_file"].endswith("model.yaml") and loaded_spec.output_index == 1
    (tmp_path / "bad.yaml").write_text("arch: tiny_cnn\nwidht: 3\n")
    with pytest.raises(InputError, match="unknown config key 'widht'.*did you mean 'width'"):
        load_checkpoint(tmp_path / "bad.yaml")


def test_training_and_retrain_fair_start_from_init_weights(tmp_path):
    """ERM (TrainConfig.model) and retrain_fair (the ERM run's spec) both start from model.init_weights."""
    import numpy as np

    from trustmed.debias import RetrainFair
    from trustmed.debias.data import GroupedSet

    spec = ModelSpec(arch="tiny_cnn", width=4, image_size=8)
    start = build_model(spec)
    start.load_state_dict(_perturbed(start, 3))
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, path)
    started = build_model(spec.model_copy(update={"init_weights": path}))
    assert torch.equal(started.state_dict()["extractor.0.weight"], start.state_dict()["extractor.0.weight"])
    train_config = {"model": spec.model_copy(update={"init_weights": path}).model_dump(mode="json")}
    retrain = RetrainFair.from_train_config(train_config, epochs=0)
    assert retrain.init_weights == str(path)
    data = GroupedSet(torch.rand(8, 3, 8, 8), np.array([0, 1] * 4), np.array(["a"] * 4 + ["b"] * 4))
    retrain.fit(build_model(spec), data)  # zero epochs: the re-initialised model is the start
    got = retrain.model_.state_dict()["extractor.0.weight"]
    assert torch.equal(got, start.state_dict()["extractor.0.weight"])
    scratch = RetrainFair(epochs=0).fit(build_model(spec), data).model_.state_dict()["extractor.0.weight"]
    assert not torch.equal(scratch, start.state_dict()["extractor.0.weight"])

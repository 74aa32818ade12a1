"""Image classifiers as ``head ∘ extractor`` and their checkpoints.

Every classifier is a :class:`Classifier`: an ``extractor`` (image → feature vector) followed by a
linear ``head`` (features → logits). Post-hoc debiasing (SWiFT, BMFT) treats the two parts
differently, so the split is part of the model's contract. Backbones come from MONAI; ``tiny_cnn``
is a small preset that trains in seconds on a CPU.

A checkpoint is a directory with ``model.safetensors`` (weights; loading never executes code) and
``model.json`` (the :class:`ModelSpec` that rebuilds the architecture, plus free-form metadata).

>>> spec = ModelSpec(arch="tiny_cnn", in_channels=3, n_outputs=1, image_size=32)
>>> model = build_model(spec)
>>> import torch
>>> model(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from trustmed.errors import InputError
from trustmed.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_finite,
    read_json,
    read_tensors,
    refuse_pickles,
)

__all__ = [
    "ARCHITECTURES",
    "Classifier",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "load_checkpoint",
    "save_checkpoint",
]


class ModelSpec(BaseModel):
    """What rebuilds a classifier: architecture name and its sizes."""

    model_config = ConfigDict(extra="forbid")

    arch: str = "tiny_cnn"
    in_channels: int = 3
    n_outputs: int = 1
    image_size: int = 64
    width: int = 16
    dropout: float = 0.0


class Classifier(nn.Module):
    """``head(extractor(x))``; a single output is squeezed to shape ``(batch,)`` (binary logits)."""

    def __init__(self, extractor: nn.Module, head: nn.Linear):
        super().__init__()
        self.extractor = extractor
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.extractor(x))
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits


def _tiny_cnn(spec: ModelSpec) -> tuple[nn.Module, int]:
    w = spec.width

    def block(cin: int, cout: int) -> list[nn.Module]:
        conv = nn.Conv2d(cin, cout, 3, padding=1)
        return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    layers = [*block(spec.in_channels, w), *block(w, 2 * w), *block(2 * w, 4 * w)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if spec.dropout:
        layers.append(nn.Dropout(spec.dropout))
    return nn.Sequential(*layers), 4 * w


def _monai_resnet(depth: int) -> Callable[[ModelSpec], tuple[nn.Module, int]]:
    def build(spec: ModelSpec) -> tuple[nn.Module, int]:
        from monai.networks.nets import resnet

        net = getattr(resnet, f"resnet{depth}")(
            spatial_dims=2, n_input_channels=spec.in_channels, num_classes=1, feed_forward=False
        )
        return net, net.in_planes if hasattr(net, "in_planes") else 512

    return build


def _monai_densenet121(spec: ModelSpec) -> tuple[nn.Module, int]:
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=spec.in_channels, out_channels=1)
    n_features = net.class_layers.out.in_features
    net.class_layers.out = nn.Identity()
    return net, n_features


ARCHITECTURES: dict[str, Callable[[ModelSpec], tuple[nn.Module, int]]] = {
    "tiny_cnn": _tiny_cnn,
    "resnet10": _monai_resnet(10),
    "resnet18": _monai_resnet(18),
    "resnet34": _monai_resnet(34),
    "resnet50": _monai_resnet(50),
    "densenet121": _monai_densenet121,
}


def build_model(spec: ModelSpec | dict[str, Any]) -> Classifier:
    """Build an untrained :class:`Classifier` from a spec."""
    if isinstance(spec, dict):
        spec = ModelSpec(**spec)
    if spec.arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {spec.arch!r}; choose one of {sorted(ARCHITECTURES)}")
    extractor, n_features = ARCHITECTURES[spec.arch](spec)
    with torch.no_grad():
        probe = extractor.eval()(torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size))
    extractor.train()
    n_features = int(probe.shape[-1]) if probe.ndim == 2 else n_features
    return Classifier(extractor, nn.Linear(n_features, spec.n_outputs))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def save_checkpoint(model: nn.Module, spec: ModelSpec, out_dir: str | Path, **metadata: Any) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (spec + metadata) into ``out_dir``."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out_dir / "model.safetensors", save(tensors))
    payload = {"spec": spec.model_dump(), "metadata": metadata}
    atomic_write_text(out_dir / "model.json", json.dumps(payload, indent=2, default=str) + "\n")
    return out_dir


def load_checkpoint(path: str | Path) -> tuple[Classifier, ModelSpec, dict[str, Any]]:
    """Load a checkpoint directory (or its ``model.safetensors``) → ``(model, spec, metadata)``.

    A missing, truncated or damaged file, weights that do not fit the spec or are not finite, and a
    pickle-format file in the folder are each an :class:`InputError` naming the file.
    """
    path = Path(path)
    ckpt_dir = path.parent if path.suffix == ".safetensors" else path
    if not ckpt_dir.is_dir():
        raise InputError(f"checkpoint folder not found: {ckpt_dir}")
    refuse_pickles(ckpt_dir, what="trustmed checkpoint folder")
    weights, meta_file = ckpt_dir / "model.safetensors", ckpt_dir / "model.json"
    for required in (weights, meta_file):
        if not required.is_file():
            raise InputError(f"checkpoint file not found: {required}")
    payload = read_json(meta_file, what="model.json")
    try:
        spec = ModelSpec(**payload["spec"])
        metadata = payload.get("metadata", {})
        if not isinstance(metadata, dict):
            raise TypeError("'metadata' is not a mapping")
    except (KeyError, TypeError, AttributeError, ValidationError) as exc:
        raise InputError(f"{meta_file}: not a trustmed model.json ({str(exc).splitlines()[0]})") from None
    try:
        model = build_model(spec)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{meta_file}: the model spec does not build ({str(exc).splitlines()[0]})") from None
    state = read_tensors(weights)
    check_finite(state, weights)
    expected = model.state_dict()
    mismatched = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    unexpected = [k for k in state if k not in expected]
    if mismatched or unexpected:
        first = (mismatched or unexpected)[0]
        raise InputError(
            f"{weights}: weights do not match the architecture in {meta_file} "
            f"(arch={spec.arch!r}; first mismatching tensor: {first!r})"
        )
    model.load_state_dict(state)
    return model, spec, metadata

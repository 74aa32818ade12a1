"""Weights from local files onto a :class:`~trustmed.models.Classifier`: key formats and checks.

A weights file is read with :func:`trustmed.io.read_tensors` (safetensors, or a ``.pt``/``.pth``
state dict with ``torch.load(weights_only=True)``; nothing is unpickled). Its keys may be in one of
these formats, recognised in this order:

* trustmed's own (``extractor.*``, ``head.*``), as in ``model.safetensors``;
* a ``model.factory`` module's own keys: the layer named by ``model.head`` becomes ``head``, the
  rest ``extractor``;
* torchvision's DenseNet121 (``features.*``, ``classifier.*``; both the current ``norm1`` and the
  old ``norm.1`` layer names) or MONAI's (``class_layers.out.*``), mapped onto MONAI's DenseNet121
  (MONAI's own download helper maps the same names; ``monai.networks.nets.densenet``);
* torchvision's ResNet (``fc.*``), mapped onto MONAI's ResNet (built in torchvision's layout).

A ``module.`` prefix (``DataParallel``) is dropped. ``strict`` loading (``model.weights``) needs
every tensor to fit. Initialising (``model.init_weights``) needs every extractor tensor to fit,
sums (3 → 1) or spreads (1 → 3) the first convolution over input channels when the image channels
differ, and keeps a freshly initialised head when the file's head has another shape (an ImageNet
head of 1000 classes). A mismatch is one line listing the first mismatching tensors.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from trustmed.errors import InputError
from trustmed.io import check_finite, read_tensors

__all__ = ["classifier_keys", "load_weights", "torchvision_densenet_keys", "torchvision_resnet_keys"]

log = logging.getLogger(__name__)

_DENSELAYER = re.compile(
    r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
_SHOWN = 3


def torchvision_densenet_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision (or MONAI) DenseNet state dict in trustmed's keys for ``arch: densenet121``.

    >>> t = torch.zeros(1)
    >>> keys = torchvision_densenet_keys({"features.denseblock1.denselayer1.norm.1.weight": t,
    ...                                   "features.denseblock1.denselayer2.conv2.weight": t,
    ...                                   "classifier.bias": t})
    >>> for key in sorted(keys):
    ...     print(key)
    extractor.features.denseblock1.denselayer1.layers.norm1.weight
    extractor.features.denseblock1.denselayer2.layers.conv2.weight
    head.bias
    """
    out = {}
    for key, value in state.items():
        if key.startswith(("classifier.", "class_layers.out.")):
            out["head." + key.rsplit(".", 1)[1]] = value
            continue
        match = _DENSELAYER.match(key)
        if match and ".layers." not in key:
            key = f"{match[1]}.layers.{match[2]}{match[3]}.{match[4]}"
        out["extractor." + key] = value
    return out


def torchvision_resnet_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict in trustmed's keys for ``arch: resnet18`` etc. (``fc`` → ``head``)."""
    return {("head." + k[3:] if k.startswith("fc.") else "extractor." + k): v for k, v in state.items()}


def _factory_keys(state: Mapping[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    prefix = head + "."
    return {
        ("head." + k[len(prefix) :] if k.startswith(prefix) else "extractor." + k): v
        for k, v in state.items()
    }


def classifier_keys(state: Mapping[str, torch.Tensor], spec) -> dict[str, torch.Tensor]:
    """``state`` in the keys of the classifier ``spec`` builds (see the module docstring)."""
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if all(k.startswith(("extractor.", "head.")) for k in state):
        return state
    if spec.forks:
        return state  # only trustmed's own keys describe a forked model
    if spec.factory is not None:
        return _factory_keys(state, spec.head)
    if spec.arch == "densenet121":
        return torchvision_densenet_keys(state)
    if spec.arch.startswith("resnet"):
        return torchvision_resnet_keys(state)
    return state


def _first_conv(expected: Mapping[str, torch.Tensor]) -> str | None:
    return next((k for k, v in expected.items() if k.startswith("extractor.") and v.ndim == 4), None)


def _adapt_channels(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    if value.ndim != 4 or value.shape[0] != target.shape[0] or value.shape[2:] != target.shape[2:]:
        return None
    src, dst = value.shape[1], target.shape[1]
    if (src, dst) == (3, 1):
        log.info("%s: 3-channel weights summed over channels for 1-channel images", key)
        return value.sum(dim=1, keepdim=True)
    if (src, dst) == (1, 3):
        log.info("%s: 1-channel weights spread over 3 channels", key)
        return value.repeat(1, 3, 1, 1) / 3
    return None


def _describe(items: list[str]) -> str:
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def load_weights(model: nn.Module, path: str | Path, spec, *, strict: bool = True) -> None:
    """Load the weights file ``path`` into ``model`` (built from ``spec``); see the module docstring."""
    path = Path(path)
    what = "model.weights" if strict else "model.init_weights"
    raw = read_tensors(path, what=what)
    check_finite(raw, path)
    state = classifier_keys(raw, spec)
    expected = model.state_dict()
    first_conv = _first_conv(expected)
    loaded: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    fresh_head = []
    for key, target in expected.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue
            if not strict and key.startswith("head."):
                fresh_head.append(key)
                continue
            problems.append(f"missing {key}")
            continue
        value = state[key]
        if value.shape != target.shape:
            adapted = _adapt_channels(key, value, target) if (not strict and key == first_conv) else None
            if adapted is not None:
                value = adapted
            elif not strict and key.startswith("head."):
                fresh_head.append(key)
                continue
            else:
                problems.append(f"{key} {tuple(value.shape)}≠{tuple(target.shape)}")
                continue
        loaded[key] = value.to(target.dtype)
    unexpected = [f"unexpected {k}" for k in state if k not in expected]
    problems += unexpected
    if problems:
        arch = spec.factory or spec.arch
        raise InputError(f"{path}: {what} do not fit {arch!r}: {_describe(problems)}")
    if fresh_head:
        log.info("%s: the head (%s) does not fit; it starts freshly initialised", path, ", ".join(fresh_head))
        loaded = {k: v for k, v in loaded.items() if not k.startswith("head.")}
    model.load_state_dict({**expected, **loaded})

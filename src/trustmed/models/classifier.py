"""Image classifiers as ``head ∘ extractor`` and their checkpoints.

Every classifier is a :class:`Classifier`: an ``extractor`` (image → feature vector) followed by a
linear ``head`` (features → logits). Post-hoc debiasing (SWiFT, BMFT) treats the two parts
differently, so the split is part of the model's contract. A classifier comes from

* a registered architecture (:data:`ARCHITECTURES`: MONAI ResNets and DenseNet121, and
  ``tiny_cnn``, a small preset that trains in seconds on a CPU), or
* any torch module, through :func:`trustmed.models.wrap` (Python) or a ``factory`` in the
  :class:`ModelSpec` (config files: ``factory: "pkg.module:fn"``, ``kwargs``, ``head``).

A head with several outputs (a 14-finding chest-X-ray model) is used for one of them:
``output_index`` (an index, or a name from ``output_names``) makes the classifier a binary one
for that output, and every other output is kept (:func:`binary_view` and :func:`merge_output`).

A checkpoint is a directory with ``model.safetensors`` (weights; loading never executes code) and
``model.json`` (the :class:`ModelSpec` that rebuilds the architecture, plus free-form metadata).
A spec with a ``factory`` imports that module when the checkpoint is loaded, like any Python import.

>>> spec = ModelSpec(arch="tiny_cnn", in_channels=3, n_outputs=1, image_size=32)
>>> model = build_model(spec)
>>> import torch
>>> model(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2])
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from trustmed.errors import InputError
from trustmed.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_finite,
    first_line,
    read_json,
    read_tensors,
    refuse_pickles,
)

__all__ = [
    "ARCHITECTURES",
    "Classifier",
    "ModelSpec",
    "binary_view",
    "build_model",
    "count_parameters",
    "load_checkpoint",
    "merge_output",
    "save_checkpoint",
]

log = logging.getLogger(__name__)


class ModelSpec(BaseModel):
    """What rebuilds a classifier.

    Attributes
    ----------
    arch : a registered architecture (:data:`ARCHITECTURES`); ``"factory"`` when ``factory`` is set.
    factory : ``"package.module:function"`` (or ``"path/to/file.py:function"``) returning a torch
        module; called with ``kwargs``. Importing it executes that module's code.
    head : the module's final linear layer (dotted path, e.g. ``"fc"``, ``"classifier"``); needed
        with ``factory``.
    output_index : the output used when the head has several (an index, or a name in ``output_names``).
    output_names : the names of the head's outputs (e.g. the 14 CheXpert findings).
    weights : the model's own weights (safetensors, or a ``.pt``/``.pth`` state dict), loaded as they
        are (every tensor must fit).
    init_weights : pretrained weights to start training from; torchvision-format DenseNet121 / ResNet
        keys are mapped onto the MONAI networks; a head of another shape is left freshly initialised.
    input_mean, input_std : per-channel normalisation applied to the images (in [0, 1]) before the
        extractor, e.g. ImageNet's statistics for ImageNet weights; none by default.
    forks : how many times the extractor was forked (:func:`merge_output`); set by trustmed.
    """

    model_config = ConfigDict(extra="forbid")

    arch: str = "tiny_cnn"
    factory: str | None = None
    kwargs: dict[str, Any] = {}
    head: str | None = None
    output_index: int | str | None = None
    output_names: list[str] | None = None
    weights: Path | None = None
    init_weights: Path | None = None
    in_channels: int = 3
    n_outputs: int = Field(1, ge=1)
    image_size: int = 64
    width: int = 16
    dropout: float = 0.0
    input_mean: list[float] | None = None
    input_std: list[float] | None = None
    forks: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.factory is not None:
            object.__setattr__(self, "arch", "factory")
            if self.head is None:
                raise ValueError("model.head is required with model.factory (the final linear layer's name)")
        elif self.arch == "factory":
            raise ValueError("model.arch 'factory' needs model.factory ('package.module:function')")
        if (self.input_mean is None) != (self.input_std is None):
            raise ValueError("give both model.input_mean and model.input_std, or neither")
        if self.input_std is not None and any(s <= 0 for s in self.input_std):
            raise ValueError("model.input_std must be positive")
        if self.output_names is not None and len(set(self.output_names)) != len(self.output_names):
            raise ValueError("model.output_names has duplicates")
        return self


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel; constants, not parameters."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``head(extractor(x))``.

    One output is squeezed to shape ``(batch,)`` (a binary logit); with ``output_index`` the
    classifier is binary for that output of a multi-output head (:meth:`all_logits` gives them all).
    ``normalize`` (optional) is applied to the images first.
    """

    def __init__(
        self,
        extractor: nn.Module,
        head: nn.Linear,
        *,
        output_index: int | None = None,
        output_names: Sequence[str] | None = None,
        normalize: nn.Module | None = None,
    ):
        super().__init__()
        self.extractor = extractor
        self.head = head
        self.normalize = normalize
        if output_index is not None and not 0 <= output_index < head.out_features:
            raise InputError(
                f"output_index {output_index} out of range for a head of {head.out_features} outputs"
            )
        self.output_index = output_index
        self.output_names = list(output_names) if output_names is not None else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(self.normalize(x) if self.normalize is not None else x)

    def all_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every output of the head, ``(batch, n_outputs)``."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.all_logits(x)
        if self.output_index is not None:
            return logits[..., self.output_index]
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits


class Fork(nn.Module):
    """Two extractors side by side; the features are concatenated (see :func:`merge_output`)."""

    def __init__(self, kept: nn.Module, changed: nn.Module):
        super().__init__()
        self.kept = kept
        self.changed = changed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.kept(x), self.changed(x)], dim=-1)


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

        # torchvision's layout (stride-2 stem, bias-free shortcut convolutions), so that
        # torchvision-format weights load key for key (trustmed.models.weights).
        net = getattr(resnet, f"resnet{depth}")(
            spatial_dims=2,
            n_input_channels=spec.in_channels,
            num_classes=1,
            feed_forward=False,
            conv1_t_stride=2,
            bias_downsample=False,
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


def _output_index(spec: ModelSpec, names: Sequence[str] | None, n_outputs: int) -> int | None:
    index = spec.output_index
    if index is None:
        return None
    if isinstance(index, str) and not index.lstrip("-").isdigit():
        if not names:
            raise InputError(
                f"model.output_index {index!r} is a name, but the model has no output names "
                "(give model.output_names, or an index)"
            )
        if index not in names:
            raise InputError(f"model.output_index {index!r} is not an output; outputs: {', '.join(names)}")
        return list(names).index(index)
    index = int(index)
    if not 0 <= index < n_outputs:
        raise InputError(f"model.output_index {index} out of range: the head has {n_outputs} output(s)")
    return index


def _extractor(spec: ModelSpec) -> tuple[nn.Module, nn.Linear | None, int]:
    """The extractor (forked ``spec.forks`` times), the factory's own head (or None) and the feature size."""
    if spec.forks:
        inner = spec.model_copy(update={"forks": spec.forks - 1})
        kept, head, n_features = _extractor(inner)
        changed, _, _ = _extractor(inner)
        return Fork(kept, changed), head, 2 * n_features
    if spec.factory is not None:
        from trustmed.models.wrap import call_factory, split_module

        module = call_factory(spec.factory, spec.kwargs)
        extractor, head = split_module(module, spec.head, what=f"model.factory {spec.factory!r}")
        return extractor, head, head.in_features
    if spec.arch not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {spec.arch!r}; choose one of {sorted(ARCHITECTURES)}, "
            "or give model.factory for your own"
        )
    extractor, n_features = ARCHITECTURES[spec.arch](spec)
    with torch.no_grad():
        probe = extractor.eval()(torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size))
    extractor.train()
    return extractor, None, int(probe.shape[-1]) if probe.ndim == 2 else n_features


def build_model(spec: ModelSpec | dict[str, Any], *, load_weights: bool = True) -> Classifier:
    """Build a :class:`Classifier` from a spec.

    With ``load_weights`` (default), ``spec.weights`` are loaded as they are, or else
    ``spec.init_weights`` as a pretrained start (:func:`trustmed.models.weights.load_weights`);
    :func:`load_checkpoint` builds without them (the checkpoint's own weights are loaded instead).
    """
    if isinstance(spec, dict):
        spec = ModelSpec(**spec)
    extractor, own_head, n_features = _extractor(spec)
    if own_head is not None and not spec.forks:
        head = own_head
    else:  # a registered architecture, or a forked extractor (wider features, same outputs)
        head = nn.Linear(n_features, own_head.out_features if own_head is not None else spec.n_outputs)
    names = spec.output_names
    if names is not None and len(names) != head.out_features:
        raise InputError(
            f"model.output_names has {len(names)} names but the head has {head.out_features} outputs"
        )
    normalize = Normalize(spec.input_mean, spec.input_std) if spec.input_mean is not None else None
    model = Classifier(
        extractor,
        head,
        output_index=_output_index(spec, names, head.out_features),
        output_names=names,
        normalize=normalize,
    )
    if load_weights and (spec.weights is not None or spec.init_weights is not None):
        from trustmed.models.weights import load_weights as _load

        if spec.weights is not None:
            _load(model, spec.weights, spec, strict=True)
        else:
            _load(model, spec.init_weights, spec, strict=False)
    return model


def spec_of(model: Classifier, spec: ModelSpec) -> ModelSpec:
    """``spec`` updated to describe ``model`` (its outputs, output index and forks)."""
    return spec.model_copy(
        update={
            "n_outputs": model.head.out_features,
            "output_index": model.output_index,
            "output_names": model.output_names,
            "forks": _count_forks(model.extractor),
        }
    )


def _count_forks(extractor: nn.Module) -> int:
    return 1 + _count_forks(extractor.kept) if isinstance(extractor, Fork) else 0


def binary_view(model: nn.Module) -> Classifier:
    """The binary classifier of ``model``'s chosen output: ``model`` itself when it has one output,
    else a classifier sharing its extractor with a one-output head copied from the chosen row.

    A multi-output model without ``output_index`` is an :class:`InputError`.
    """
    if not (hasattr(model, "extractor") and isinstance(getattr(model, "head", None), nn.Linear)):
        raise InputError(
            "debiasing needs a classifier with an 'extractor' and a linear 'head': "
            "wrap your model with trustmed.models.wrap(module, head=...)"
        )
    head: nn.Linear = model.head
    index = getattr(model, "output_index", None)
    if index is None:
        if head.out_features != 1:
            raise InputError(
                f"the model has {head.out_features} outputs; choose one with output_index "
                "(trustmed.models.wrap(..., output_index=...) or model.output_index in the config)"
            )
        return model
    row = nn.Linear(head.in_features, 1, bias=head.bias is not None)
    with torch.no_grad():
        row.weight.copy_(head.weight[index : index + 1])
        if head.bias is not None:
            row.bias.copy_(head.bias[index : index + 1])
    return Classifier(model.extractor, row, normalize=getattr(model, "normalize", None))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def merge_output(source: nn.Module, debiased: nn.Module) -> nn.Module:
    """Put a debiased :func:`binary_view` back into the multi-output ``source``.

    Returns ``debiased`` when ``source`` is a one-output model. Otherwise the chosen output gets the
    debiased head row; when the extractor changed too, it is forked: the other outputs keep the
    original extractor and head rows (their predictions are unchanged) and the chosen output reads
    the debiased extractor (the model grows by one extractor). ``source`` is not modified.
    """
    index = getattr(source, "output_index", None)
    if index is None:
        return debiased
    head: nn.Linear = source.head
    new_row: nn.Linear = debiased.head
    if _same_weights(source.extractor, debiased.extractor):
        merged = copy.deepcopy(source)
        with torch.no_grad():
            merged.head.weight[index] = new_row.weight[0]
            if head.bias is not None:
                merged.head.bias[index] = new_row.bias[0]
        return merged
    n_kept, n_changed = head.in_features, new_row.in_features
    fused = nn.Linear(n_kept + n_changed, head.out_features, bias=head.bias is not None)
    with torch.no_grad():
        fused.weight.zero_()
        fused.weight[:, :n_kept] = head.weight
        fused.weight[index] = 0.0
        fused.weight[index, n_kept:] = new_row.weight[0]
        if head.bias is not None:
            fused.bias.copy_(head.bias)
            fused.bias[index] = new_row.bias[0]
    extractor = Fork(copy.deepcopy(source.extractor), copy.deepcopy(debiased.extractor))
    return Classifier(
        extractor,
        fused,
        output_index=index,
        output_names=source.output_names,
        normalize=copy.deepcopy(source.normalize),
    ).train(source.training)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def save_checkpoint(model: nn.Module, spec: ModelSpec, out_dir: str | Path, **metadata: Any) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (spec + metadata) into ``out_dir``.

    The spec is updated to describe ``model`` (outputs, output index, forks), so that
    :func:`load_checkpoint` rebuilds it.
    """
    from safetensors.torch import save

    out_dir = Path(out_dir)
    if isinstance(model, Classifier):
        spec = spec_of(model, spec)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out_dir / "model.safetensors", save(tensors))
    payload = {"spec": spec.model_dump(mode="json"), "metadata": metadata}
    atomic_write_text(out_dir / "model.json", json.dumps(payload, indent=2, default=str) + "\n")
    return out_dir


SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def load_spec_file(path: str | Path) -> tuple[Classifier, ModelSpec, dict[str, Any]]:
    """A model from a spec file (YAML or JSON with the :class:`ModelSpec` keys, optionally under
    ``model:``): your own architecture and weights, used wherever a checkpoint is. Relative paths
    in it (``weights``, ``init_weights``, a ``factory`` file) are relative to the file's folder.
    """
    import yaml

    from trustmed.config import explain_error, safe_load_yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"model spec file not found: {path}")
    try:
        raw = safe_load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: unreadable model spec ({first_line(exc)})") from None
    if isinstance(raw, dict) and set(raw) == {"model"}:
        raw = raw["model"]
    if not isinstance(raw, dict):
        raise InputError(
            f"{path}: a model spec is a mapping of ModelSpec keys (arch/factory, head, weights …)"
        )
    base = path.parent
    for key in ("weights", "init_weights"):
        if raw.get(key) and not Path(str(raw[key])).is_absolute():
            raw[key] = str(base / str(raw[key]))
    factory = raw.get("factory")
    if isinstance(factory, str) and factory.partition(":")[0].endswith(".py"):
        file_part, _, name = factory.rpartition(":")
        if not Path(file_part).is_absolute():
            raw["factory"] = f"{base / file_part}:{name}"
    try:
        spec = ModelSpec(**raw)
    except ValidationError as exc:
        raise InputError(explain_error(ModelSpec, exc, str(path))) from None
    model = build_model(spec)
    return model, spec, {"spec_file": str(path)}


def load_checkpoint(path: str | Path) -> tuple[Classifier, ModelSpec, dict[str, Any]]:
    """Load a checkpoint directory (or its ``model.safetensors``) → ``(model, spec, metadata)``.

    ``path`` may also be a model spec file (``.yaml``/``.yml``/``.json``, :func:`load_spec_file`):
    a model trained elsewhere is then used like a trustmed checkpoint.

    A missing, truncated or damaged file, weights that do not fit the spec or are not finite, and a
    pickle-format file in the folder are each an :class:`InputError` naming the file.
    """
    path = Path(path)
    if path.suffix.lower() in SPEC_SUFFIXES and path.name != "model.json":
        return load_spec_file(path)
    ckpt_dir = path.parent if path.suffix in (".safetensors", ".json") else path
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
        model = build_model(spec, load_weights=False)
    except InputError as exc:
        raise InputError(f"{meta_file}: {exc}") from None
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InputError(f"{meta_file}: the model spec does not build ({first_line(exc)})") from None
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

"""Any torch classifier as a trustmed :class:`~trustmed.models.Classifier` (extractor + linear head).

:func:`wrap` takes a module and the name of its final linear layer (``"fc"`` for a ResNet,
``"classifier"`` for a DenseNet, a dotted path such as ``"class_layers.out"``) or a function that
splits the module itself, and returns the classifier that the audit, SWiFT, every baseline and
GroupDistil accept. The final layer is replaced by an identity in a copy of the module, so the
copy's output is the feature vector the layer read. A multi-output head is used for one output
(``output_index``: an index, or a name in ``output_names``); the others are kept.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
>>> model = wrap(net, head="3", output_index="b", output_names=["a", "b", "c"])
>>> x = torch.randn(5, 3, 2, 2)
>>> bool(torch.allclose(model(x), net(x)[:, 1]))
True
>>> wrap(net, head="fc")
Traceback (most recent call last):
...
trustmed.errors.InputError: module has no layer 'fc'; its linear layers: 1 (12→8), 3 (8→3)
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trustmed.errors import InputError
from trustmed.io import first_line

__all__ = ["call_factory", "linear_layers", "split_module", "wrap"]

HeadSpec = str | Callable[[nn.Module], tuple[nn.Module, nn.Linear]]


def linear_layers(module: nn.Module) -> list[str]:
    """The dotted names of ``module``'s linear layers, with their sizes (``"fc (512→1000)"``)."""
    return [
        f"{name} ({layer.in_features}→{layer.out_features})"
        for name, layer in module.named_modules()
        if isinstance(layer, nn.Linear) and name
    ]


def _replace(module: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    if isinstance(parent, nn.Sequential | nn.ModuleList) and name.isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def _tensor_output(out: Any) -> torch.Tensor | None:
    return out if isinstance(out, torch.Tensor) else None


def split_module(
    module: nn.Module,
    head: HeadSpec,
    *,
    what: str = "module",
    probe: torch.Tensor | None = None,
    copy_module: bool = False,
) -> tuple[nn.Module, nn.Linear]:
    """``(extractor, head)`` of ``module``: ``head`` names its final linear layer or splits it.

    With ``probe`` (an example input), the split is checked: ``head(extractor(probe))`` must equal
    ``module(probe)``, else the module does more after that layer and the error says so.
    """
    before = None
    if probe is not None:
        with torch.no_grad():
            before = _tensor_output(module.eval()(probe))
    if callable(head) and not isinstance(head, str):
        parts = head(module)
        if not (isinstance(parts, tuple) and len(parts) == 2 and isinstance(parts[1], nn.Linear)):
            raise InputError(f"{what}: the head function must return (extractor, nn.Linear)")
        extractor, linear = parts
    else:
        try:
            linear = module.get_submodule(head)
        except AttributeError:
            listed = ", ".join(linear_layers(module)) or "none"
            raise InputError(f"{what} has no layer {head!r}; its linear layers: {listed}") from None
        if not isinstance(linear, nn.Linear):
            listed = ", ".join(linear_layers(module)) or "none"
            raise InputError(
                f"{what}: layer {head!r} is a {type(linear).__name__}, not a linear layer; "
                f"its linear layers: {listed}"
            )
        extractor = copy.deepcopy(module) if copy_module else module
        linear = copy.deepcopy(linear) if copy_module else linear
        _replace(extractor, head, nn.Identity())
    if before is not None:
        with torch.no_grad():
            try:
                after = linear(extractor.eval()(probe))
            except RuntimeError as exc:
                raise InputError(
                    f"{what}: features do not reach the head {head!r} ({first_line(exc)})"
                ) from None
        if after.shape != before.shape or not torch.allclose(after, before, rtol=1e-4, atol=1e-5):
            raise InputError(
                f"{what}: the output is not head(features): the module does more after layer {head!r} "
                "(e.g. a sigmoid); pass a function as head that splits it"
            )
    extractor.train()
    return extractor, linear


def _import_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"trustmed_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise InputError(f"model.factory: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_factory(target: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``fn(**kwargs)`` for ``target = "package.module:fn"`` or ``"path/to/file.py:fn"``.

    Importing executes that module's code, as any Python import does; nothing else is imported.
    """
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise InputError(f"model.factory must be 'package.module:function', got {target!r}")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise InputError(f"model.factory: file not found: {path}")
            module = _import_file(path)
        else:
            module = importlib.import_module(where)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure importing user code is a bad input
        raise InputError(f"model.factory {target!r}: cannot import {where!r} ({first_line(exc)})") from None
    fn: Any = module
    for part in name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise InputError(f"model.factory {target!r}: {where!r} has no {name!r}")
    try:
        built = fn(**dict(kwargs or {}))
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"model.factory {target!r} failed: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    if not isinstance(built, nn.Module):
        raise InputError(f"model.factory {target!r} returned a {type(built).__name__}, not a torch module")
    return built


def wrap(
    module: nn.Module,
    head: HeadSpec = "fc",
    output_index: int | str | None = None,
    *,
    output_names: Sequence[str] | None = None,
    example_input: torch.Tensor | None = None,
):
    """A :class:`~trustmed.models.Classifier` of any torch classifier.

    Parameters
    ----------
    module : the trained model (left unchanged: the classifier holds a copy).
    head : the final linear layer's name (dotted path allowed: ``"fc"``, ``"classifier"``,
        ``"class_layers.out"``), or a function ``module -> (extractor, nn.Linear)``.
    output_index : the output to use when the head has several (index, or a name in
        ``output_names``); the other outputs are kept and left unchanged by debiasing.
    output_names : names of the outputs (e.g. the findings of a chest-X-ray model).
    example_input : an input batch; when given, checks that the module's output is
        ``head(features)`` (nothing after the head).
    """
    from trustmed.models.classifier import Classifier, ModelSpec, _output_index

    extractor, linear = split_module(module, head, what="module", probe=example_input, copy_module=True)
    names = list(output_names) if output_names is not None else None
    if names is not None and len(names) != linear.out_features:
        raise InputError(
            f"output_names has {len(names)} names but the head has {linear.out_features} outputs"
        )
    index = _output_index(ModelSpec(output_index=output_index), names, linear.out_features)
    return Classifier(extractor, linear, output_index=index, output_names=names).train(module.training)

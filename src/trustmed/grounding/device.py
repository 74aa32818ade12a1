"""Where grounding runs: the device and the floating-point precision of the frozen diffusion model.

Every grounding path (zero-shot grounding, prompt tuning, tiny-LDM training, the contrastive
baseline) asks this module where to run, so that the same two settings mean the same thing
everywhere:

* ``device``: ``auto`` is the process's device as accelerate sees it (``PartialState().device``:
  under ``accelerate launch`` or ``torchrun`` each process's own GPU, the GPU of a plain process on
  a machine with CUDA, else the CPU); ``cpu``; ``cuda`` is the process's CUDA device and an error
  where there is none.
* ``precision``: ``fp32``, ``fp16`` or ``bf16``, the floating-point type of the frozen networks
  (:func:`place`), or the mixed precision of a training run (:func:`mixed_precision`).

fp16 is refused on a CPU. torch 2.13's CPU kernels do run fp16 convolutions, group norms and
attention, but they are its slow path: on a Xeon with AMX-BF16 and AVX512-FP16, one large
convolution ran 1.3 times slower in fp16 than in fp32 (2.5 times faster in bf16), and the shipped
tiny LDM's UNet forward and backward 12 times slower (bf16: 6 times). fp16's narrow range also
needs loss scaling in training, which accelerate does only on a GPU. bf16 keeps fp32's range and
is allowed on a CPU (it halves the memory; large models gain speed where the CPU has AMX).

>>> resolve_device("cpu"), torch_dtype("bf16"), mixed_precision("fp32")
(device(type='cpu'), torch.bfloat16, 'no')
>>> torch_dtype("fp64")
Traceback (most recent call last):
...
trustmed.errors.InputError: precision 'fp64': expected fp32, fp16 or bf16
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import torch

from trustmed.errors import InputError

if TYPE_CHECKING:
    from trustmed.grounding.ldm import LDM

__all__ = [
    "Precision",
    "DeviceName",
    "resolve_device",
    "torch_dtype",
    "mixed_precision",
    "check_precision",
    "place",
    "is_placed",
    "accelerator_on",
]

Precision = Literal["fp32", "fp16", "bf16"]
"""Floating-point precision of the frozen networks (or of a training run's mixed precision)."""

DeviceName = Literal["auto", "cpu", "cuda"]
"""Where to run: accelerate's choice for this process, the CPU, or this process's CUDA device."""

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_dtype(precision: str) -> torch.dtype:
    """The ``torch`` floating-point type of ``precision`` (``fp32``, ``fp16`` or ``bf16``).

    >>> torch_dtype("fp32"), torch_dtype("fp16")
    (torch.float32, torch.float16)
    """
    if precision not in _DTYPES:
        raise InputError(f"precision {precision!r}: expected fp32, fp16 or bf16")
    return _DTYPES[precision]


def mixed_precision(precision: str) -> str:
    """accelerate's ``mixed_precision`` for ``precision``: ``fp32`` is ``"no"``, the others their name.

    >>> [mixed_precision(p) for p in ("fp32", "fp16", "bf16")]
    ['no', 'fp16', 'bf16']
    """
    torch_dtype(precision)  # refuses an unknown name
    return "no" if precision == "fp32" else precision


def _cuda_device() -> torch.device:
    """This process's CUDA device: accelerate's, or by local rank when accelerate was set to the CPU."""
    from accelerate.state import PartialState

    state = PartialState()
    if state.device is not None and state.device.type == "cuda":
        return state.device
    # accelerate's process state was set up on the CPU earlier in this process (``cpu=True``):
    # this process's own GPU is still the one its local rank names.
    return torch.device("cuda", state.local_process_index % torch.cuda.device_count())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` that ``device`` (``auto``, ``cpu`` or ``cuda``) names in this process.

    ``auto`` is accelerate's device for this process (``PartialState().device``): the process's GPU
    when CUDA is available (its own one under ``accelerate launch`` or ``torchrun``), else the CPU;
    ``accelerate launch --cpu`` (``ACCELERATE_USE_CPU``) keeps it on the CPU. ``cuda`` is the
    process's CUDA device, an :class:`~trustmed.errors.InputError` when there is none. A
    ``torch.device`` is returned as it is.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    trustmed.errors.InputError: device 'tpu': expected auto, cpu or cuda
    """
    if isinstance(device, torch.device):
        return device
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"device {device!r}: expected auto, cpu or cuda")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if device == "cuda":
            raise InputError("device cuda: no CUDA device is available")
        return torch.device("cpu")
    if device == "auto":
        from accelerate.utils import parse_flag_from_env

        if parse_flag_from_env("ACCELERATE_USE_CPU") or os.environ.get("ACCELERATE_TORCH_DEVICE") == "cpu":
            return torch.device("cpu")
    return _cuda_device()


def check_precision(device: torch.device, precision: str) -> torch.dtype:
    """The dtype of ``precision`` on ``device``; fp16 on a CPU is refused (see the module docstring).

    >>> check_precision(torch.device("cpu"), "bf16")
    torch.bfloat16
    >>> check_precision(torch.device("cpu"), "fp16")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    trustmed.errors.InputError: precision fp16 on a CPU: ...; use bf16 or fp32
    """
    dtype = torch_dtype(precision)
    if dtype == torch.float16 and device.type == "cpu":
        raise InputError("precision fp16 on a CPU: slow there, and without loss scaling; use bf16 or fp32")
    return dtype


def place(ldm: LDM, device: str | torch.device = "auto", precision: str = "fp32") -> LDM:
    """Move the frozen ``ldm``'s UNet, autoencoder and text encoder to ``device`` in ``precision``.

    The networks are moved in place (:meth:`~trustmed.grounding.ldm.LDM.to`) and ``ldm`` is
    returned; its noise schedule stays in float32 on the CPU. Before a cast to another dtype the
    weights' fingerprint (:func:`~trustmed.grounding.prompt_tuning.ldm_fingerprint`) is taken and
    kept with the model, so a prompt tuned on the float32 model is still recognised as tuned for
    this one. fp16 on a CPU is an :class:`~trustmed.errors.InputError` (use bf16 or fp32).

    >>> import tempfile
    >>> from trustmed.grounding.ldm import load_ldm, make_random_monai_ldm
    >>> ldm = place(load_ldm(make_random_monai_ldm(tempfile.mkdtemp())), "cpu", "bf16")
    >>> ldm.device, ldm.dtype, next(ldm.text_encoder.parameters()).dtype
    (device(type='cpu'), torch.bfloat16, torch.bfloat16)
    """
    target = resolve_device(device)
    dtype = check_precision(target, precision)
    if is_placed(ldm, target, dtype):  # nothing to move (and no cast for diffusers to warn about)
        return ldm
    if any(p.dtype != dtype for p in _weights(ldm)):
        from trustmed.grounding.prompt_tuning.artefact import ldm_fingerprint

        ldm_fingerprint(ldm)  # cached on the model: the fingerprint of the weights as loaded
    return ldm.to(device=target, dtype=dtype)


def _weights(ldm: LDM):
    for module in (ldm.unet, ldm.autoencoder, ldm.text_encoder):
        yield from module.parameters()


def is_placed(ldm: LDM, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether every weight of ``ldm``'s three networks is already on ``device`` in ``dtype``."""
    return all(_same_device(p.device, device) and p.dtype == dtype for p in _weights(ldm))


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    index = lambda d: torch.cuda.current_device() if d.index is None else d.index  # noqa: E731
    return index(a) == index(b)


def accelerator_on(device: torch.device, mixed: str = "no"):
    """An accelerator (:func:`trustmed.train.make_accelerator`) whose device is of ``device``'s type.

    accelerate keeps one process state, and the device it chose first (the CPU after a run with
    ``cpu=True``, a GPU after one without) would otherwise stay for every later run in the same
    process. When that state disagrees with ``device`` outside a distributed launch it is reset;
    inside one, it is an :class:`~trustmed.errors.InputError`.

    >>> accelerator_on(torch.device("cpu")).device
    device(type='cpu')
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    from trustmed.train import make_accelerator

    cpu = device.type == "cpu"
    accelerator = make_accelerator(mixed, cpu=cpu)
    if accelerator.device.type == device.type:
        return accelerator
    if PartialState().distributed_type != DistributedType.NO:
        raise InputError(
            f"device {device.type}: this distributed launch runs on {accelerator.device.type}; "
            "launch it for that device or set device: auto"
        )
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = make_accelerator(mixed, cpu=cpu)
    if accelerator.device.type != device.type:  # pragma: no cover - accelerate chose another device
        raise InputError(f"device {device.type}: accelerate runs this process on {accelerator.device.type}")
    return accelerator

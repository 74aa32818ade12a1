"""The shared training loop.

Every method trains through :func:`fit`: the same code runs on one CPU, one GPU, several GPUs
(``accelerate launch --multi_gpu``) or several nodes. Methods differ only in the ``loss_fn`` they
pass (and optionally a ``grad_hook`` that edits gradients before the optimiser step, as SWiFT's
masked step does), so the loop is written once.

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> x = torch.randn(64, 3); y = (x[:, 0] > 0).float()
>>> model = torch.nn.Linear(3, 1)
>>> loader = DataLoader(TensorDataset(x, y), batch_size=16)
>>> loss = lambda m, b: torch.nn.functional.binary_cross_entropy_with_logits(m(b[0]).squeeze(1), b[1])
>>> result = fit(model, torch.optim.SGD(model.parameters(), lr=0.5), loader, loss, epochs=5)
>>> result.history[-1]["train_loss"] < result.history[0]["train_loss"]
True
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from trustmed.errors import InputError
from trustmed.io import (
    PICKLE_SUFFIXES,
    atomic_write_text,
    file_sha256,
    read_json,
    read_state,
    write_state,
)
from trustmed.progress import track

__all__ = ["FitResult", "fit", "predict", "make_accelerator"]

log = logging.getLogger(__name__)


def make_accelerator(mixed_precision: str | None = None, cpu: bool = False):
    """An ``accelerate.Accelerator`` for one run.

    ``mixed_precision="auto"`` picks bf16 (or fp16) on a GPU and none on a CPU; ``None`` keeps the
    precision of the run already set up in this process (none if there is none). Accelerate keeps
    one global state per process and refuses a second accelerator with other settings, so when a
    new run in the same process (the demo trains several models) asks for other settings, that
    state is reset first; the process group of a distributed launch is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    state = AcceleratorState._shared_state
    if mixed_precision == "auto":
        on_gpu = torch.cuda.is_available() and not cpu
        mixed_precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if on_gpu else "no"
    elif mixed_precision is None:
        mixed_precision = state.get("_mixed_precision", "no")
    if state and (state.get("_mixed_precision") != mixed_precision or bool(state.get("_cpu")) != cpu):
        AcceleratorState._reset_state(reset_partial_state=False)
    # A seedable sampler shuffles each epoch from (seed, epoch), so a resumed run sees the same
    # batches as an uninterrupted one.
    return Accelerator(
        mixed_precision=mixed_precision,
        cpu=cpu,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


@dataclass
class FitResult:
    """What :func:`fit` returns: per-epoch history, the selected epoch, and training cost."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    wall_time_s: float = 0.0
    epochs: int = 0
    samples_seen: int = 0
    parameter_updates: int = 0


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        return _batch_size(next(iter(batch.values())))
    if isinstance(batch, list | tuple):
        return _batch_size(batch[0])
    return 0


CHECKPOINT_FORMAT = 2
"""Version of the loop's checkpoint layout (1 was accelerate's ``save_state``, which pickles)."""


def _state_path(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / "loop_state.json"


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _parts(optimizer, scheduler, stateful: list, accelerator) -> dict[str, Any]:
    """Everything besides the model and the RNGs that a resumed run needs, by file name."""
    parts: dict[str, Any] = {"optimizer": optimizer}
    if scheduler is not None:
        parts["scheduler"] = scheduler
    for i, obj in enumerate(stateful):
        parts[f"stateful_{i}"] = obj
    if getattr(accelerator, "scaler", None) is not None:
        parts["scaler"] = accelerator.scaler
    return parts


def _clear_checkpoints(ckpt: Path) -> None:
    """Remove the loop state of an earlier run from ``ckpt`` (only what the loop writes there)."""
    _state_path(ckpt).unlink(missing_ok=True)
    for old in ckpt.glob("epoch_*"):
        shutil.rmtree(old, ignore_errors=True)
    for tmp in ckpt.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _save_checkpoint(
    accelerator, ckpt: Path, epoch: int, model, parts: dict, best_state, result: FitResult, fingerprint
) -> None:
    """Save the loop state so that a kill at any instant leaves a loadable checkpoint.

    Every file is a safetensors file (:func:`trustmed.io.write_state`) in a new ``epoch_<n>``
    folder; only when all are written is ``loop_state.json`` atomically pointed at that folder,
    with each file's SHA-256, and older folders are removed.
    """
    state_dir = ckpt / f"epoch_{epoch:04d}"
    state_dir.mkdir(parents=True, exist_ok=True)
    write_state(state_dir / f"rng_{accelerator.process_index}.safetensors", _rng_state())
    if accelerator.is_main_process:
        write_state(state_dir / "model.safetensors", accelerator.unwrap_model(model).state_dict())
        for name, obj in parts.items():
            write_state(state_dir / f"{name}.safetensors", obj.state_dict())
        if best_state is not None:
            write_state(state_dir / "best.safetensors", best_state)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "state_dir": state_dir.name,
        "processes": accelerator.num_processes,
        "files": {p.name: file_sha256(p) for p in sorted(state_dir.iterdir()) if p.is_file()},
        "fingerprint": fingerprint,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "samples_seen": result.samples_seen,
        "parameter_updates": result.parameter_updates,
    }
    atomic_write_text(_state_path(ckpt), json.dumps(state))
    for old in ckpt.glob("epoch_*"):
        if old.name != state_dir.name:
            shutil.rmtree(old, ignore_errors=True)


class _LoopState(BaseModel):
    """``loop_state.json``: which epoch folder holds the state, its files' hashes, and the history."""

    model_config = ConfigDict(extra="forbid")

    format: int
    epoch: int = Field(ge=1)
    state_dir: str = Field(pattern=r"^epoch_\d{4,}$")
    processes: int = Field(ge=1)
    files: dict[str, str]
    fingerprint: str | None = None
    history: list[dict[str, int | float | None]]
    best_epoch: int | None = None
    best_score: float | None = None
    samples_seen: int = Field(ge=0)
    parameter_updates: int = Field(ge=0)


def _read_loop_state(ckpt: Path, fingerprint: str | None) -> _LoopState:
    path = _state_path(ckpt)
    raw = read_json(path, what="loop state")
    if isinstance(raw, dict) and raw.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            f"{path}: a checkpoint in an older format (accelerate's pickles), which trustmed no longer "
            "loads; rerun without --resume"
        )
    try:
        saved = _LoopState.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(f"{path}: not a trustmed loop state ({key}: {first['msg'].lower()})") from None
    if fingerprint is not None and saved.fingerprint != fingerprint:
        raise InputError(
            f"--resume: the checkpoint in {ckpt} was made with a different config; rerun without --resume"
        )
    return saved


def _verified_files(ckpt: Path, saved: _LoopState, needed: list[str]) -> Path:
    """The epoch folder of ``saved``, once every file in it is known, present and unchanged."""
    state_dir = ckpt / saved.state_dir
    if not state_dir.is_dir():
        raise InputError(f"{state_dir}: not found, but {_state_path(ckpt)} points to it")
    for item in sorted(ckpt.iterdir()):
        if item.suffix.lower() in PICKLE_SUFFIXES:
            raise InputError(f"{item}: a pickle-format file in the checkpoint folder; it is never loaded")
    for item in sorted(state_dir.iterdir()):
        if item.name not in saved.files and not item.name.endswith(".tmp"):
            raise InputError(
                f"{item}: not a file this checkpoint was saved with (only safetensors files are; "
                "a pickle is never loaded)"
            )
    for name in [*needed, *saved.files]:
        path = state_dir / name
        if name not in saved.files or not path.is_file():
            raise InputError(f"{path}: missing from the checkpoint")
        if file_sha256(path) != saved.files[name]:
            raise InputError(f"{path}: damaged (its SHA-256 differs from the one in {_state_path(ckpt)})")
    return state_dir


def _load_into(obj, path: Path) -> None:
    state = read_state(path)
    try:
        obj.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise InputError(f"{path}: does not fit this run ({str(exc).splitlines()[0][:160]})") from None


def _resume(accelerator, ckpt: Path, model, parts: dict, result: FitResult, fingerprint) -> tuple[int, Any]:
    """Load the saved loop state into the run; return the epoch to start from and the best weights."""
    saved = _read_loop_state(ckpt, fingerprint)
    rng = f"rng_{accelerator.process_index}.safetensors"
    needed = ["model.safetensors", rng, *(f"{name}.safetensors" for name in parts)]
    state_dir = _verified_files(ckpt, saved, needed)
    _load_into(accelerator.unwrap_model(model), state_dir / "model.safetensors")
    for name, obj in parts.items():
        _load_into(obj, state_dir / f"{name}.safetensors")
    best_state = read_state(state_dir / "best.safetensors") if "best.safetensors" in saved.files else None
    try:
        _set_rng_state(read_state(state_dir / rng))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{state_dir / rng}: not a random-state file ({exc})") from None
    result.history = [dict(row) for row in saved.history]
    result.best_epoch, result.best_score = saved.best_epoch, saved.best_score
    result.samples_seen, result.parameter_updates = saved.samples_seen, saved.parameter_updates
    log.info("resumed from %s at epoch %d", ckpt, saved.epoch)
    return saved.epoch, best_state


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    *,
    epochs: int,
    accelerator=None,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    select: str | None = None,
    mode: str = "max",
    grad_hook: Callable[[nn.Module], None] | None = None,
    scheduler=None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    stateful: list | None = None,
    fingerprint: str | None = None,
    description: str = "train",
) -> FitResult:
    """Train ``model`` for ``epochs`` epochs and keep the weights of the best validation epoch.

    Parameters
    ----------
    loss_fn : callable ``(model, batch) -> scalar loss``.
    evaluate : callable ``(model) -> dict`` run after every epoch (validation metrics).
    select, mode : key of ``evaluate``'s dict to select the epoch by, and ``"max"`` or ``"min"``.
        With no ``select``, the last epoch is kept.
    grad_hook : called after ``backward`` and before ``optimizer.step`` (e.g. to mask gradients).
    checkpoint_dir, resume : the loop state (model, optimiser, scheduler, RNGs, ``stateful``
        objects, best weights, history) is saved there after every epoch, as safetensors files and
        JSON (never a pickle); ``resume=True`` continues from it, ``resume=False`` first removes
        an earlier run's state from it. A damaged, foreign or incomplete checkpoint is an
        :class:`~trustmed.errors.InputError` naming the file.
    stateful : extra objects with ``state_dict``/``load_state_dict`` saved with the checkpoint
        (tensors, numbers, strings and containers of them).
    fingerprint : identifies the run's settings; resuming a checkpoint saved with another one is
        refused.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    accelerator = accelerator or make_accelerator()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if scheduler is not None:
        scheduler = accelerator.prepare(scheduler)
    parts = _parts(optimizer, scheduler, list(stateful or []), accelerator)
    result = FitResult()
    start_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and resume and _state_path(ckpt).is_file():
        start_epoch, best_state = _resume(accelerator, ckpt, model, parts, result, fingerprint)
    elif ckpt is not None:
        if resume:
            log.warning("--resume: no checkpoint in %s, starting from scratch", ckpt)
        if accelerator.is_main_process:
            _clear_checkpoints(ckpt)
        accelerator.wait_for_everyone()
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t0 = time.perf_counter()
    for epoch in track(range(start_epoch, epochs), description=description, total=epochs - start_epoch):
        model.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        total, count = 0.0, 0
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            accelerator.backward(loss)
            if grad_hook is not None:
                grad_hook(accelerator.unwrap_model(model))
            optimizer.step()
            n = _batch_size(batch)
            total += float(loss.detach()) * n
            count += n
            result.samples_seen += n * accelerator.num_processes
            result.parameter_updates += n_trainable
        if scheduler is not None:
            scheduler.step()
        row: dict[str, float] = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
        if evaluate is not None:
            model.eval()
            row.update({k: float(v) for k, v in evaluate(accelerator.unwrap_model(model)).items()})
        result.history.append(row)
        if select is not None:
            if select not in row:
                raise KeyError(f"select={select!r} is not a key of evaluate()'s result: {sorted(row)}")
            score = row[select]
            better = result.best_score is None or (
                score > result.best_score if mode == "max" else score < result.best_score
            )
            if better and score == score:  # NaN never wins
                result.best_score, result.best_epoch = score, epoch + 1
                best_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
        if ckpt is not None:
            _save_checkpoint(accelerator, ckpt, epoch + 1, model, parts, best_state, result, fingerprint)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    elif select is None and result.history:
        result.best_epoch = int(result.history[-1]["epoch"])
    result.epochs = len(result.history)
    result.wall_time_s = time.perf_counter() - t0
    return result


@torch.no_grad()
def predict(
    model: nn.Module,
    loader,
    forward: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
    *,
    accelerator=None,
) -> dict[str, torch.Tensor]:
    """Run ``forward(model, batch) -> {name: tensor}`` over ``loader`` and gather every output.

    Outputs are gathered across processes with ``gather_for_metrics``, which drops the samples
    that distributed samplers duplicate to pad the last batch, so metrics see each sample once.
    """
    accelerator = accelerator or make_accelerator()
    # Inference needs no DDP wrapper: only the loader is sharded, the model is moved as it is.
    loader = accelerator.prepare_data_loader(loader)
    model = accelerator.unwrap_model(model).to(accelerator.device)
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        with accelerator.autocast():
            out = forward(model, batch)
        out = accelerator.gather_for_metrics(out)
        for key, value in out.items():
            value = value.detach().cpu()
            chunks.setdefault(key, []).append(value.float() if value.is_floating_point() else value)
    model.train(was_training)
    return {k: torch.cat(v) for k, v in chunks.items()}

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
import io
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trustmed.io import atomic_write_bytes, atomic_write_text
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


def _state_path(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / "loop_state.json"


def _save_checkpoint(accelerator, ckpt: Path, epoch: int, best_state, result: FitResult) -> None:
    """Save the loop state so that a kill at any instant leaves a loadable checkpoint.

    The state goes to a new ``epoch_<n>`` folder; only then is ``loop_state.json`` atomically
    pointed at it, and older folders are removed. ``best.pt`` is replaced atomically too.
    """
    state_dir = f"epoch_{epoch:04d}"
    accelerator.save_state(str(ckpt / state_dir))
    if not accelerator.is_main_process:
        return
    if best_state is not None:
        buffer = io.BytesIO()
        torch.save(best_state, buffer)
        atomic_write_bytes(ckpt / "best.pt", buffer.getvalue())
    state = {
        "epoch": epoch,
        "state_dir": state_dir,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "samples_seen": result.samples_seen,
        "parameter_updates": result.parameter_updates,
    }
    atomic_write_text(_state_path(ckpt), json.dumps(state))
    for old in ckpt.glob("epoch_*"):
        if old.name != state_dir:
            shutil.rmtree(old, ignore_errors=True)


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
    checkpoint_dir, resume : the loop state (model, optimiser, RNG, ``stateful`` objects, best
        weights, history) is saved there after every epoch with ``accelerator.save_state``;
        ``resume=True`` continues from it.
    stateful : extra objects with ``state_dict``/``load_state_dict`` saved with the checkpoint.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    accelerator = accelerator or make_accelerator()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if scheduler is not None:
        scheduler = accelerator.prepare(scheduler)
    for obj in stateful or []:
        accelerator.register_for_checkpointing(obj)
    result = FitResult()
    start_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and ckpt is not None and _state_path(ckpt).is_file():
        saved = json.loads(_state_path(ckpt).read_text())
        accelerator.load_state(str(ckpt / saved["state_dir"]))
        start_epoch = saved["epoch"]
        result.history = saved["history"]
        result.best_epoch, result.best_score = saved["best_epoch"], saved["best_score"]
        result.samples_seen, result.parameter_updates = saved["samples_seen"], saved["parameter_updates"]
        if (ckpt / "best.pt").is_file():
            best_state = torch.load(ckpt / "best.pt", weights_only=True)
        log.info("resumed from %s at epoch %d", ckpt, start_epoch)
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
            _save_checkpoint(accelerator, ckpt, epoch + 1, best_state, result)
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

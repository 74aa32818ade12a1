"""The pretraining side of ``benchmarks/pretrained_start.py``: a source task, a small pretraining loop, and
the weights written as a torchvision-format DenseNet121 state dict.

The source task draws lesions with SynthSkin's renderer (:func:`trustmed.data.synth.skin.render_lesions`,
so the images share the target's low-level structure) under another seed and another label rule:
the label is the **quartile of the latent lesion severity** (4 classes, no class overlap), the
skin types are drawn uniformly (no under-represented group), and the lesion cues are stronger
(``cue_strength`` 1.25 instead of 1.0). SynthSkin's binary label is a noisy threshold of that same
severity, so the source task is closely related to the target, not identical to it.

The state dict is written as torchvision's ``densenet121`` names it (``features.*`` with
``denselayerN.norm1`` and no ``layers.``, ``classifier.*`` with the source task's 4 outputs), so
that reading it back with ``model.init_weights`` goes through trustmed's key mapping.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "SOURCE_CUE_STRENGTH",
    "SOURCE_CLASSES",
    "check_init_weights",
    "pretrain",
    "severity_task",
    "to_torchvision_densenet",
]

SOURCE_CLASSES = 4
SOURCE_CUE_STRENGTH = 1.25
_LAYER = re.compile(r"^(.*denselayer\d+)\.layers\.(norm|relu|conv)([12])\.(.*)$")


def severity_task(
    n: int, *, seed: int, image_size: int = 32, cue_strength: float = SOURCE_CUE_STRENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` lesion images ``N×3×H×W`` in [0, 1] (8-bit quantised, as SynthSkin's files are read) and
    their severity quartile (0–3)."""
    from trustmed.data.synth.skin import render_lesions

    rng = np.random.default_rng(seed)
    fitzpatrick = rng.integers(1, 7, n)
    severity = rng.random(n).astype(np.float32)
    age = rng.uniform(18, 90, n).astype(np.float32)
    images = []
    for start in range(0, n, 512):
        stop = min(start + 512, n)
        batch = render_lesions(
            rng,
            fitzpatrick[start:stop],
            severity[start:stop],
            age[start:stop],
            image_size=image_size,
            cue_strength=cue_strength,
        )
        images.append(np.round(batch * 255).astype(np.uint8))
    pixels = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).float() / 255.0
    labels = torch.from_numpy(np.minimum((severity * SOURCE_CLASSES).astype(np.int64), SOURCE_CLASSES - 1))
    return pixels.contiguous(), labels


def pretrain(
    spec,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    lr: float = 2e-3,
    batch_size: int = 64,
    held_out: float = 0.2,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``build_model(spec)`` (``spec.n_outputs`` classes) with cross-entropy; Adam, cosine schedule.

    A ``held_out`` fraction of the images is kept aside and scored after every epoch (accuracy);
    the last epoch's weights are returned (nothing is selected on it).
    """
    from trustmed.models import build_model
    from trustmed.utils import seed_everything

    seed_everything(seed)
    n_held = int(round(held_out * len(images)))
    order = torch.randperm(len(images))
    fit_idx, held_idx = order[n_held:], order[:n_held]
    model = build_model(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(fit_idx) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        perm = fit_idx[torch.randperm(len(fit_idx))]
        total, seen = 0.0, 0
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(images[held_idx[i : i + 256]]).argmax(-1) for i in range(0, n_held, 256)])
        accuracy = float((pred == labels[held_idx]).float().mean()) if n_held else float("nan")
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "held_out_accuracy": accuracy})
    info = {
        "n_fit": len(fit_idx),
        "n_held_out": n_held,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "history": history,
        "held_out_accuracy": history[-1]["held_out_accuracy"],
        "wall_time_s": time.perf_counter() - t0,
    }
    return model.eval(), info


def to_torchvision_densenet(model: nn.Module) -> dict[str, torch.Tensor]:
    """A trustmed ``densenet121`` classifier's state dict in torchvision's key format.

    ``extractor.`` is dropped, ``head.`` becomes ``classifier.``, and MONAI's dense-layer names
    (``denselayerN.layers.norm1``) become torchvision's (``denselayerN.norm1``).
    """
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("head."):
            key = "classifier." + key[len("head.") :]
        else:
            key = key.removeprefix("extractor.")
            match = _LAYER.match(key)
            if match:
                key = f"{match[1]}.{match[2]}{match[3]}.{match[4]}"
        out[key] = value.detach().cpu().clone().contiguous()
    return out


def check_init_weights(path: Path, source: nn.Module, spec) -> dict[str, Any]:
    """Build ``spec`` with ``init_weights=path`` and count what came from ``source``.

    Returns how many extractor tensors equal the source model's (and how many there are), and
    whether the head (of another shape) was left freshly initialised.
    """
    from trustmed.models import build_model

    model = build_model(spec.model_copy(update={"init_weights": Path(path)}))
    mine, theirs = model.state_dict(), source.state_dict()
    extractor = [k for k in mine if k.startswith("extractor.")]
    equal = sum(
        1
        for k in extractor
        if k in theirs and mine[k].shape == theirs[k].shape and torch.equal(mine[k], theirs[k])
    )
    return {
        "extractor_tensors": len(extractor),
        "extractor_tensors_loaded": equal,
        "source_head_shape": list(theirs["head.weight"].shape),
        "target_head_shape": list(mine["head.weight"].shape),
        "head_fresh": mine["head.weight"].shape != theirs["head.weight"].shape,
        "torchvision_keys": sum(1 for k in to_torchvision_densenet(source) if k.startswith("features.")),
    }

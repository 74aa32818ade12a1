"""Training examples of prompt tuning: latents, sentences and the anatomy their location words name.

:func:`build_examples` reads a grounding table's images and sentences (never its boxes) and the
anatomy masks of each image (:mod:`trustmed.grounding.anatomy`); :func:`insert_random_tokens` is the
text noise applied to the tokenized sentences during training.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trustmed.errors import InputError
from trustmed.grounding.ldm import LDM
from trustmed.grounding.prompt_tuning.artefact import TunedPrompt

__all__ = ["PromptExamples", "build_examples", "insert_random_tokens"]


@dataclasses.dataclass
class PromptExamples:
    """Training pairs: latents, sentences, anatomy masks at the crop size, and what was counted."""

    latents: torch.Tensor
    sentences: list[str]
    masks: torch.Tensor
    has_mask: torch.Tensor
    image_ids: list[str]
    counts: dict


def _crop_mask(mask: np.ndarray, ldm: LDM) -> torch.Tensor:
    from trustmed.grounding.heatmaps import crop_info

    info = crop_info(mask.shape[0], mask.shape[1], ldm.image_size)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    m = F.interpolate(m, size=info.resized, mode="area")[0, 0]
    return m[info.top : info.top + info.size, info.left : info.left + info.size]


def build_examples(ldm: LDM, table, anatomy_dir: str | Path, *, batch_size: int = 64) -> PromptExamples:
    """Encode a grounding table's images and map each sentence to its anatomy mask.

    ``table`` is a grounding table (:func:`trustmed.data.mscxr.load_mscxr`; only ``image_id``,
    ``path`` and ``text`` are read — never the boxes). ``anatomy_dir`` holds ``<image_id>.npz``
    files of boolean masks of the image's size (:mod:`trustmed.grounding.anatomy`). The images are
    encoded wherever ``ldm`` is (:func:`~trustmed.grounding.device.place`); the examples' tensors
    are float32 on the CPU, and training moves each batch to its device.
    """
    from trustmed.data.mscxr import read_image
    from trustmed.grounding.anatomy import load_anatomy, location_mask
    from trustmed.grounding.zero_shot import prepare_image

    if len(table) == 0:
        raise InputError("prompt tuning: the training table is empty")
    anatomy_dir = Path(anatomy_dir)
    if not anatomy_dir.is_dir():
        raise InputError(f"anatomy folder {anatomy_dir}: not found")
    counts: Counter = Counter()
    unknown_words: Counter = Counter()
    images: dict[str, torch.Tensor] = {}
    masks, has_mask, sentences, ids = [], [], [], []
    empty = torch.zeros(ldm.image_size, ldm.image_size)
    for row in table.itertuples():
        image = read_image(row.path)
        if row.image_id not in images:
            images[row.image_id] = prepare_image(image, ldm)[0]
        anatomy = load_anatomy(anatomy_dir / f"{row.image_id}.npz", shape=image.shape)
        mask, parse = location_mask(row.text, anatomy)
        counts["pairs"] += 1
        if mask is None:
            counts["unknown_location" if parse.unknown else "no_location"] += 1
            unknown_words.update(parse.unknown)
            masks.append(empty)
        else:
            counts["with_location"] += 1
            masks.append(_crop_mask(mask, ldm))
        has_mask.append(mask is not None)
        sentences.append(row.text)
        ids.append(row.image_id)
    order = list(images)
    weight = next(ldm.autoencoder.parameters())
    device, dtype = weight.device, weight.dtype
    with torch.no_grad():
        stacked = torch.stack([images[i] for i in order])
        z = torch.cat(
            [
                ldm.encode_images(stacked[i : i + batch_size].to(device, dtype)).to("cpu", torch.float32)
                for i in range(0, len(order), batch_size)
            ]
        )
    index = {k: i for i, k in enumerate(order)}
    latents = z[[index[i] for i in ids]]
    counts = dict(counts)
    counts["unknown_words"] = dict(unknown_words)
    return PromptExamples(latents, sentences, torch.stack(masks), torch.tensor(has_mask), ids, counts)


def insert_random_tokens(
    ids: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    prompt: TunedPrompt,
    eos_id: int,
    insertable: torch.Tensor,
    rate: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert one random vocabulary token among the phrase's words of a ``rate`` share of the rows.

    Text noise for robustness to wording the prompt was not tuned on (random insertion, as in EDA:
    Wei & Zou, EMNLP 2019). ``ids``, ``mask`` and ``weights`` are slotted rows
    (:meth:`TunedPrompt.tokenize`); the token goes at a random place between the first word and the
    end token, everything after it moves one place right and the last (padding) column is dropped.
    A row without a free padding column is left as it is. The inserted token gets the weight the
    phrase's words have (0 for ``end_and_padding``, 1 for ``content``). Location words are never
    removed, so the anatomy mask still holds.
    """
    ids, mask, weights = ids.clone(), mask.clone(), weights.clone()
    n, length = ids.shape
    eos = (ids == eos_id).int().argmax(dim=1)
    end = prompt.ctx_position == "end"
    first = 1 if end else 1 + prompt.n_ctx
    last_used = eos + (prompt.n_ctx if end else 0)  # index of the last non-padding column
    chosen = torch.rand(n, generator=generator) < rate
    word_weight = 1.0 if prompt.token_set == "content" else 0.0
    for r in torch.nonzero(chosen & (last_used + 1 < length)).flatten().tolist():
        q = int(torch.randint(first, int(eos[r]) + 1, (1,), generator=generator))
        token = insertable[torch.randint(len(insertable), (1,), generator=generator)]
        ids[r] = torch.cat([ids[r, :q], token.to(ids.dtype), ids[r, q:-1]])
        mask[r] = torch.cat([mask[r, :q], mask.new_ones(1), mask[r, q:-1]])
        weights[r] = torch.cat([weights[r, :q], weights.new_full((1,), word_weight), weights[r, q:-1]])
    return ids, mask, weights

"""Zero-shot phrase grounding from a frozen latent diffusion model's cross-attention.

Implements Vilouras et al., "Zero-Shot Medical Phrase Grounding with Off-the-shelf Diffusion
Models" (IEEE J-BHI; arXiv 2404.12920): preprocess (resize the shortest side, centre crop), encode to
latents, deterministic DDIM inversion with guidance 0 (or single-pass noising), capture the
cross-attention of the conditional branch at the selected layers and timesteps, average the phrase
tokens' maps, Gaussian filter, Otsu, and undo the crop with NaN padding. No parameter is learned.

>>> cfg = GroundingConfig()
>>> cfg.num_steps, cfg.band, cfg.layers, cfg.spacing
(300, (0.4, 0.6), 'bottleneck', 'trailing')
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from trustmed.config import Config
from trustmed.errors import InputError
from trustmed.grounding.attention import AttentionRecorder
from trustmed.grounding.heatmaps import CropInfo, aggregate_maps, ground_in_batches, resize_and_crop
from trustmed.grounding.inversion import (
    DEFAULT_BAND,
    Band,
    band_steps,
    ddim_invert,
    ddim_timesteps,
    noise_latents,
)
from trustmed.grounding.ldm import LDM

__all__ = [
    "GroundingConfig",
    "ZeroShotGrounder",
    "prepare_image",
    "tokenize_phrases",
    "ground_table",
    "score_table",
]

log = logging.getLogger(__name__)


class GroundingConfig(Config):
    """Every setting of the zero-shot pipeline; defaults are the paper's.

    Attributes
    ----------
    mode : ``inversion`` (DDIM inversion, attention recorded along it) or ``noising`` (noise to
        each of ``noise_levels`` and one UNet pass per level).
    num_steps : DDIM inversion steps N.
    spacing : DDIM timestep spacing (``trailing``, ``leading``, ``linspace``).
    band : the inversion steps whose timestep t lies in [band[0]·T, band[1]·T) are recorded
        (:func:`~trustmed.grounding.inversion.band_steps`).
    noise_levels : fractions of T used by ``noising`` mode.
    layers : ``bottleneck``, ``all``, a resolution (int) or layer names/globs.
    tokens : words whose tokens are kept (``None``: every non-special prompt token).
    token_set : ``content`` (the paper: prompt tokens except start/end/padding) or
        ``end_and_padding`` (the end token and the padding after it, which in a causal text encoder
        summarise the whole sentence; choose it on validation data for models that route the
        sentence through them). ``None``: a tuned prompt's token set, else ``content``.

    ``band``, ``layers`` and ``token_set`` are also what a tuned prompt was trained for; the grounder
    refuses a prompt that recorded other values (:meth:`TunedPrompt.check_readout
    <trustmed.grounding.prompt_tuning.TunedPrompt.check_readout>`).
    gaussian_sigma, sigma_reference : σ in pixels at a ``sigma_reference``² image (rescaled to the
        model's crop size).
    otsu : apply Otsu post-processing.
    truncate : truncate phrases longer than the tokenizer's maximum (otherwise an error).
    batch_size : (image, phrase) pairs per UNet batch.
    """

    seed: int = 0
    mode: Literal["inversion", "noising"] = "inversion"
    num_steps: int = 300
    spacing: Literal["trailing", "leading", "linspace"] = "trailing"
    band: Band = DEFAULT_BAND
    noise_levels: list[float] = [0.5]
    layers: str | int | list[str] = "bottleneck"
    tokens: list[str] | None = None
    token_set: Literal["content", "end_and_padding"] | None = None
    gaussian_sigma: float = 2.5
    sigma_reference: int = 512
    otsu: bool = True
    truncate: bool = False
    batch_size: int = 8


def prepare_image(image: np.ndarray, ldm: LDM) -> tuple[torch.Tensor, CropInfo]:
    """Resize the shortest side to the model's size, centre crop, scale to its range and channels.

    ``image`` is (H, W) or (C, H, W) with C = 1 or the model's channel count, values in [0, 1].
    """
    x, info = resize_and_crop(image, ldm.image_size, channels=(1, ldm.image_channels))
    if x.shape[0] != ldm.image_channels:
        x = x.expand(ldm.image_channels, -1, -1)
    lo, hi = ldm.value_range
    return x * (hi - lo) + lo, info


def tokenize_phrases(
    tokenizer,
    phrases: list[str],
    *,
    truncate: bool = False,
    words: list[str] | None = None,
    token_set: str = "content",
    max_length: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Tokenize to the tokenizer's maximum length; return the encoding and (B, T) token weights.

    The weights select every non-special, non-padding token (or only the tokens of ``words``); with
    ``token_set="end_and_padding"``, the end token and the padding instead. A phrase without any
    content token is an error either way. ``max_length`` (default: the tokenizer's maximum) is the
    padded length.
    """
    max_len = int(tokenizer.model_max_length) if max_length is None else int(max_length)
    for p in phrases:
        n = len(tokenizer(p, truncation=False)["input_ids"])
        if n > max_len and not truncate:
            raise InputError(
                f"phrase {p!r}: {n} tokens exceed the tokenizer's maximum of {max_len}; "
                "shorten it or set truncate=true"
            )
    enc = tokenizer(
        phrases,
        padding="max_length",
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    keep = (enc["attention_mask"] == 1) & (enc["special_tokens_mask"] == 0)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    keep &= ~torch.isin(enc["input_ids"], special)
    if words is not None:
        wanted = {w.lower() for w in words}
        pieces = [[tokenizer.convert_ids_to_tokens(int(i)) for i in row] for row in enc["input_ids"]]
        chosen = torch.tensor(
            [[p.lower().replace("</w>", "").strip("Ġ▁") in wanted for p in row] for row in pieces]
        )
        keep &= chosen
    for phrase, row in zip(phrases, keep, strict=True):
        if not row.any():
            what = f"none of the words {words}" if words is not None else "only special or unknown tokens"
            raise InputError(f"phrase {phrase!r}: {what}; nothing to ground")
    if token_set == "end_and_padding":
        ids = enc["input_ids"]
        end = torch.isin(ids, torch.tensor([tokenizer.eos_token_id, tokenizer.pad_token_id]))
        keep = end & (torch.cumsum(ids == tokenizer.eos_token_id, dim=1) > 0)
    elif token_set != "content":
        raise InputError(f"token_set {token_set!r}: expected content or end_and_padding")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, keep.float()


class ZeroShotGrounder:
    """Ground phrases in images with a frozen LDM (see the module docstring).

    Parameters
    ----------
    ldm
        The model (:func:`trustmed.grounding.ldm.load_ldm`).
    config
        Pipeline settings (:class:`GroundingConfig`).
    prompt
        A :class:`~trustmed.grounding.prompt_tuning.TunedPrompt` for this model: its context
        vectors (and LoRA weights) are applied. Refused for any other base model, and when
        ``config`` sets a ``token_set``, ``layers`` or ``band`` other than the one the prompt was
        trained with; ``token_set: null`` follows the prompt.

    Attributes
    ----------
    config : the settings used (``token_set`` resolved).
    timing_ : dict of seconds spent in the last :meth:`ground` call (``total``, ``pairs``).
    """

    def __init__(self, ldm: LDM, config: GroundingConfig | None = None, *, prompt=None):
        config = config or GroundingConfig()
        self.ldm = ldm if prompt is None else prompt.apply(ldm)
        if prompt is not None:
            prompt.check_readout(config)
        # the paper reads the content tokens; a tuned prompt, the tokens it was aligned for
        token_set = config.token_set or (prompt.token_set if prompt is not None else "content")
        self.config = config.model_copy(update={"token_set": token_set})
        self.prompt = prompt

    def encode_phrases(self, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The text the UNet attends to, (B, T, D), and the weights (B, T) of the tokens read."""
        if self.prompt is not None:
            return self.prompt.encode(
                self.ldm,
                phrases,
                truncate=self.config.truncate,
                words=self.config.tokens,
                token_set=self.config.token_set,
            )
        enc, weights = tokenize_phrases(
            self.ldm.tokenizer,
            phrases,
            truncate=self.config.truncate,
            words=self.config.tokens,
            token_set=self.config.token_set,
        )
        mask = enc["attention_mask"] if self.ldm.text_attention_mask else None
        return self.ldm.encode_text(enc["input_ids"], mask), weights

    def _uncond(self, n: int) -> torch.Tensor:
        tok = self.ldm.tokenizer
        enc = tok([""], padding="max_length", max_length=int(tok.model_max_length), return_tensors="pt")
        mask = enc["attention_mask"] if self.ldm.text_attention_mask else None
        return self.ldm.encode_text(enc["input_ids"], mask).expand(n, -1, -1)

    def _sigma(self) -> float:
        return self.config.gaussian_sigma * self.ldm.image_size / self.config.sigma_reference

    @torch.no_grad()
    def crop_heatmaps(
        self, images: list[np.ndarray], phrases: list[str]
    ) -> tuple[torch.Tensor, list[CropInfo]]:
        """Aggregated attention maps at the crop size (before filtering), for one batch of pairs."""
        if len(images) != len(phrases):
            raise InputError(
                f"{len(images)} images but {len(phrases)} phrases; expected one phrase per image"
            )
        prepared = [prepare_image(im, self.ldm) for im in images]
        x = torch.stack([p[0] for p in prepared])
        cond, weights = self.encode_phrases(list(phrases))
        z0 = self.ldm.encode_images(x)
        n = len(images)
        cfg = self.config
        with AttentionRecorder(self.ldm.unet, layers=cfg.layers, reduce_heads=True) as rec:
            if cfg.mode == "inversion":
                timesteps = ddim_timesteps(self.ldm.num_train_timesteps, cfg.num_steps, cfg.spacing)
                band = band_steps(timesteps, cfg.band, self.ldm.num_train_timesteps)
                lo, hi = band.start, band.stop
                uncond = self._uncond(n)
                both = torch.cat([uncond, cond])

                def predict(z, t, i):
                    tt = torch.full((z.shape[0],), t, dtype=torch.long)
                    if lo <= i < hi:
                        rec.step, rec.batch_slice = t, slice(n, 2 * n)
                        out = self.ldm.unet_forward(torch.cat([z, z]), torch.cat([tt, tt]), both)
                        return out[:n]
                    rec.step, rec.batch_slice = None, slice(0, 0)
                    return self.ldm.unet_forward(z, tt, uncond)

                ddim_invert(
                    predict, z0, self.ldm.alphas_cumprod, timesteps, self.ldm.prediction_type, stop_after=hi
                )
                recorded = {int(timesteps[i]) for i in band}
            else:
                recorded = set()
                for k, level in enumerate(cfg.noise_levels):
                    t = min(
                        int(round(level * self.ldm.num_train_timesteps)), self.ldm.num_train_timesteps - 1
                    )
                    # the same seeded noise for every pair, so a pair's map does not depend on its batch
                    zt = torch.cat(
                        [
                            noise_latents(
                                z[None],
                                self.ldm.alphas_cumprod[t],
                                torch.Generator().manual_seed(cfg.seed * 1009 + k),
                            )
                            for z in z0
                        ]
                    )
                    rec.step, rec.batch_slice = t, None
                    self.ldm.unet_forward(zt, torch.full((n,), t, dtype=torch.long), cond)
                    recorded.add(t)
            maps = [m for m in rec.maps() if m.step is not None and m.probs.shape[0] == n]
        heat = aggregate_maps(maps, weights, self.ldm.image_size, steps=recorded)
        return heat, [p[1] for p in prepared]

    def ground(self, images: list[np.ndarray], phrases: list[str]) -> list[np.ndarray]:
        """Heatmaps over the original images (NaN outside the model's field of view), in [0, 1]."""
        out, self.timing_ = ground_in_batches(
            self.crop_heatmaps,
            images,
            phrases,
            batch_size=self.config.batch_size,
            sigma=self._sigma(),
            otsu=self.config.otsu,
        )
        return out


def ground_table(grounder: ZeroShotGrounder, table, *, texts: list[str] | None = None) -> list[np.ndarray]:
    """Heatmaps for every row of a grounding table (images read from ``path``), in row order.

    ``texts`` replaces the table's phrases (e.g. with left↔right swapped).
    """
    from trustmed.data.mscxr import read_image

    phrases = list(table["text"]) if texts is None else list(texts)
    cache: dict[str, np.ndarray] = {}
    images = []
    for path in table["path"]:
        if path not in cache:
            cache[path] = read_image(path)
        images.append(cache[path])
    return grounder.ground(images, phrases)


def score_table(table, heatmaps: list[np.ndarray]):
    """Per-pair grounding metrics (CNR, mIoU, AUC-ROC, pointing game) of ``heatmaps`` against the boxes."""
    import pandas as pd

    from trustmed.data.mscxr import boxes_to_mask
    from trustmed.metrics.grounding import pair_metrics

    rows = []
    for row, heat in zip(table.itertuples(), heatmaps, strict=True):
        h, w = heat.shape
        masks = [boxes_to_mask([b], h, w) for b in row.boxes]
        rows.append(
            {"pair_id": row.pair_id, "category": row.category, "text": row.text, **pair_metrics(heat, masks)}
        )
    return pd.DataFrame(rows)

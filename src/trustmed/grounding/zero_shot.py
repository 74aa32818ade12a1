"""Zero-shot phrase grounding from a frozen latent diffusion model's cross-attention.

Implements Vilouras et al., "Zero-Shot Medical Phrase Grounding with Off-the-shelf Diffusion
Models" (IEEE J-BHI; arXiv 2404.12920): preprocess (resize the shortest side, centre crop), encode to
latents, deterministic DDIM inversion with guidance 0 (or single-pass noising), capture the
cross-attention of the conditional branch at the selected layers and timesteps, average the phrase
tokens' maps, Gaussian filter, Otsu, and undo the crop with NaN padding. No parameter is learned.

Where the settings come from (:func:`resolve_config`), later ones winning: the defaults of
:class:`GroundingConfig`; the model folder's ``trustmed.json`` (``"grounding"``: what its authors
recommend, e.g. the tiny LDM's token set); a ``preset`` (``mscxr_paper``: the paper's public code on
its chest X-ray LDM, :data:`PRESETS`); a tuned prompt's read-out (token set, layers, band); and
finally every key the user set. :func:`describe` shows the result for a model before a long run.

>>> cfg = GroundingConfig()
>>> cfg.num_steps, cfg.band, cfg.layers, cfg.spacing
(300, (0.4, 0.6), 'bottleneck', 'trailing')
>>> resolve_config(GroundingConfig(preset="mscxr_paper", num_steps=50)).layers
[3, 4, 6, 7]
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

import numpy as np
import torch

from trustmed.config import Config
from trustmed.errors import InputError
from trustmed.grounding.attention import AttentionRecorder, cross_attention_layers
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
    "PRESETS",
    "resolve_config",
    "unknown_words",
    "describe",
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
    preset : a named set of values (:data:`PRESETS`) applied under the keys set explicitly;
        ``mscxr_paper`` reproduces the zero-shot paper's code on its chest X-ray LDM.
    mode : ``inversion`` (DDIM inversion, attention recorded along it) or ``noising`` (noise to
        each of ``noise_levels`` and one UNet pass per level).
    num_steps : DDIM inversion steps N.
    spacing : DDIM timestep spacing (``trailing``, ``trailing_integer`` (the paper's code: T // N
        between steps), ``leading``, ``linspace``).
    band : the inversion steps whose timestep t lies in [band[0]·T, band[1]·T) are recorded
        (:func:`~trustmed.grounding.inversion.band_steps`).
    band_by : ``timestep`` (as above) or ``step`` (the paper's code: inversion steps
        ⌊band[0]·N⌋ … ⌊band[1]·N⌋ - 1).
    prediction_alpha : the ᾱ that turns a v-prediction into ε during inversion: ``target`` (the
        step moved to) or ``current`` (the latent's own step, the paper's code).
    noise_levels : fractions of T used by ``noising`` mode.
    layers : ``bottleneck``, ``all``, a resolution (int), layer names/globs, or layer indices
        (a list of ints into the UNet's cross-attention layers in registration order).
    text_attention_mask : pass the padding mask to the text encoder (``None``: the model folder's
        setting; Stable Diffusion's CLIP, used by the paper's model, was trained without one).
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
    gaussian_border : how the Gaussian filter treats the edges: ``nearest`` or ``reflect`` (the
        paper's code, scipy's default).
    otsu : apply Otsu post-processing.
    truncate : truncate phrases longer than the tokenizer's maximum (otherwise an error).
    batch_size : (image, phrase) pairs inverted together: one UNet call per step for the batch.
    device : ``auto`` (the process's GPU when there is one, under ``accelerate launch`` too; else
        the CPU), ``cpu`` or ``cuda``.
    precision : floating-point type of the frozen UNet, autoencoder and text encoder (``fp32``,
        ``fp16``, ``bf16``); the DDIM arithmetic and the maps stay in float32.
    """

    seed: int = 0
    preset: Literal["mscxr_paper"] | None = None
    mode: Literal["inversion", "noising"] = "inversion"
    num_steps: int = 300
    spacing: Literal["trailing", "trailing_integer", "leading", "linspace"] = "trailing"
    band: Band = DEFAULT_BAND
    band_by: Literal["timestep", "step"] = "timestep"
    prediction_alpha: Literal["target", "current"] = "target"
    noise_levels: list[float] = [0.5]
    layers: str | int | list[int] | list[str] = "bottleneck"
    tokens: list[str] | None = None
    token_set: Literal["content", "end_and_padding"] | None = None
    text_attention_mask: bool | None = None
    gaussian_sigma: float = 2.5
    sigma_reference: int = 512
    gaussian_border: Literal["nearest", "reflect"] = "nearest"
    otsu: bool = True
    truncate: bool = False
    batch_size: int = 8
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"


PRESETS: dict[str, dict[str, Any]] = {
    # The zero-shot paper's public code (Vilouras et al., arXiv 2404.12920: eval_ldm.py, sampler.py,
    # models_local/get_models.py) on the MONAI model-zoo chest X-ray LDM: cross-attention layers
    # 3, 4, 6 and 7 (four of the six 16² layers), SD-2.1's CLIP without an attention mask, 300
    # trailing steps at the integer ratio T // N (334 timesteps), steps 120-179 recorded
    # (t = 360-537), v → ε with the current step's ᾱ, the prompt's content tokens, Gaussian σ = 2.5
    # at 512² with scipy's reflecting border, Otsu.
    "mscxr_paper": {
        "mode": "inversion",
        "num_steps": 300,
        "spacing": "trailing_integer",
        "band": (0.4, 0.6),
        "band_by": "step",
        "prediction_alpha": "current",
        "layers": [3, 4, 6, 7],
        "token_set": "content",
        "text_attention_mask": False,
        "gaussian_sigma": 2.5,
        "sigma_reference": 512,
        "gaussian_border": "reflect",
        "otsu": True,
    }
}
"""Named sets of grounding settings (``grounding.preset``)."""


def _model_recommendation(ldm: LDM | None) -> dict[str, Any]:
    """The ``grounding`` settings of the model folder's ``trustmed.json``, validated."""
    from pydantic import ValidationError

    from trustmed.config import explain_error

    recommended = dict(getattr(ldm, "recommended", None) or {})
    if not recommended:
        return {}
    where = f"{getattr(ldm, 'source', '') or 'model folder'}/trustmed.json: grounding"
    try:
        GroundingConfig(**recommended)
    except ValidationError as err:
        raise InputError(explain_error(GroundingConfig, err, where)) from None
    return recommended


def resolve_config(config: GroundingConfig, ldm: LDM | None = None, prompt=None) -> GroundingConfig:
    """The settings a grounder runs with (see the module docstring for the order).

    The keys ``config`` sets explicitly win; a preset named by the user wins over the model
    folder's recommendation, one named by the model folder does not; a tuned prompt's read-out
    (``token_set``, ``layers``, ``band``) wins over both. ``token_set`` falls back to ``content``
    and ``text_attention_mask`` to the model's own setting.

    >>> resolve_config(GroundingConfig()).token_set
    'content'
    >>> resolve_config(GroundingConfig(preset="mscxr_paper", layers="all")).layers
    'all'
    """
    # a key set to None (token_set, text_attention_mask) is left to the model, preset or prompt
    explicit = {k: getattr(config, k) for k in config.model_fields_set if getattr(config, k) is not None}
    model = _model_recommendation(ldm)
    values: dict[str, Any] = {}
    if "preset" not in explicit and model.get("preset"):
        values.update(PRESETS[model["preset"]])
    values.update(model)
    if explicit.get("preset"):
        values.update(PRESETS[explicit["preset"]])
    if prompt is not None:
        from trustmed.grounding.prompt_tuning.artefact import READOUT

        values.update({k: prompt.meta[k] for k in READOUT if prompt.meta.get(k) is not None})
        values.setdefault("token_set", prompt.token_set)
    values.update(explicit)
    values.setdefault("token_set", "content")
    if values.get("text_attention_mask") is None and ldm is not None:
        values["text_attention_mask"] = bool(ldm.text_attention_mask)
    return GroundingConfig(**values)


_WORD = re.compile(r"\w+|[^\w\s]+")


def unknown_words(tokenizer, phrase: str) -> list[str]:
    """The words of ``phrase`` that ``tokenizer`` maps (in part) to its unknown token.

    >>> from trustmed.grounding.ldm import build_tokenizer
    >>> unknown_words(build_tokenizer(["left", "effusion"]), "Left pleural effusion")
    ['pleural']
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    words = _WORD.findall(phrase)
    return [w for w in words if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]


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
        Pipeline settings (:class:`GroundingConfig`), resolved against the model folder's
        recommendation, a preset and the prompt by :func:`resolve_config`.
    prompt
        A :class:`~trustmed.grounding.prompt_tuning.TunedPrompt` for this model: its context
        vectors (and LoRA weights) are applied. Refused for any other base model, and when
        ``config`` sets a ``token_set``, ``layers`` or ``band`` other than the one the prompt was
        trained with; unset keys follow the prompt.

    The model is moved to ``config.device`` and cast to ``config.precision`` (in place).

    Attributes
    ----------
    config : the settings used (resolved).
    timing_ : dict of seconds spent in the last :meth:`ground` call (``total``, ``pairs``).
    """

    def __init__(self, ldm: LDM, config: GroundingConfig | None = None, *, prompt=None):
        from trustmed.grounding.device import place

        self.config = resolve_config(config or GroundingConfig(), ldm, prompt)
        if prompt is not None:
            prompt.check_readout(self.config)
        self.ldm = place(
            ldm if prompt is None else prompt.apply(ldm), self.config.device, self.config.precision
        )
        self.prompt = prompt
        self._warned: set[str] = set()

    def _warn_unknown(self, phrases: list[str]) -> None:
        new = [
            w for p in phrases for w in unknown_words(self.ldm.tokenizer, p) if w.lower() not in self._warned
        ]
        if new:
            self._warned.update(w.lower() for w in new)
            log.warning(
                "the model's tokenizer does not know %s: they become its unknown token and carry no "
                "meaning (check the phrase's spelling, or use a model whose vocabulary has them)",
                ", ".join(repr(w) for w in dict.fromkeys(new)),
            )

    def encode_phrases(self, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The text the UNet attends to, (B, T, D), and the weights (B, T) of the tokens read."""
        self._warn_unknown(phrases)
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
        return self._encode(enc), weights

    def _encode(self, enc) -> torch.Tensor:
        device = self.ldm.device
        mask = enc["attention_mask"].to(device) if self.config.text_attention_mask else None
        return self.ldm.encode_text(enc["input_ids"].to(device), mask)

    def _uncond(self, n: int) -> torch.Tensor:
        tok = self.ldm.tokenizer
        enc = tok([""], padding="max_length", max_length=int(tok.model_max_length), return_tensors="pt")
        return self._encode(enc).expand(n, -1, -1)

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
        device, dtype = self.ldm.device, self.ldm.dtype
        x = torch.stack([p[0] for p in prepared]).to(device=device, dtype=dtype)
        cond, weights = self.encode_phrases(list(phrases))
        z0 = self.ldm.encode_images(x).float()
        n = len(images)
        cfg = self.config

        def unet(z, t, context):
            tt = torch.full((z.shape[0],), t, dtype=torch.long, device=device)
            return self.ldm.unet_forward(z.to(dtype), tt, context).float()

        with AttentionRecorder(self.ldm.unet, layers=cfg.layers, reduce_heads=True) as rec:
            if cfg.mode == "inversion":
                timesteps, band = self.schedule()
                lo, hi = band.start, band.stop
                uncond = self._uncond(n)
                both = torch.cat([uncond, cond])

                def predict(z, t, i):
                    if lo <= i < hi:
                        rec.step, rec.batch_slice = t, slice(n, 2 * n)
                        return unet(torch.cat([z, z]), t, both)[:n]
                    rec.step, rec.batch_slice = None, slice(0, 0)
                    return unet(z, t, uncond)

                ddim_invert(
                    predict,
                    z0,
                    self.ldm.alphas_cumprod,
                    timesteps,
                    self.ldm.prediction_type,
                    stop_after=hi,
                    prediction_alpha=cfg.prediction_alpha,
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
                    unet(zt, t, cond)
                    recorded.add(t)
            maps = [m for m in rec.maps() if m.step is not None and m.probs.shape[0] == n]
        heat = aggregate_maps(maps, weights, self.ldm.image_size, steps=recorded)
        return heat.cpu(), [p[1] for p in prepared]

    def schedule(self) -> tuple[np.ndarray, range]:
        """The inversion's timesteps (increasing) and the indices of the steps recorded."""
        cfg, total = self.config, self.ldm.num_train_timesteps
        timesteps = ddim_timesteps(total, cfg.num_steps, cfg.spacing)
        return timesteps, band_steps(timesteps, cfg.band, total, by=cfg.band_by, num_steps=cfg.num_steps)

    def ground(self, images: list[np.ndarray], phrases: list[str]) -> list[np.ndarray]:
        """Heatmaps over the original images (NaN outside the model's field of view), in [0, 1]."""
        out, self.timing_ = ground_in_batches(
            self.crop_heatmaps,
            images,
            phrases,
            batch_size=self.config.batch_size,
            sigma=self._sigma(),
            otsu=self.config.otsu,
            border=self.config.gaussian_border,
        )
        return out


@torch.no_grad()
def _layer_resolutions(grounder: ZeroShotGrounder, t: int) -> tuple[list[dict], list[str]]:
    """Every cross-attention layer (index, name, resolution) and the names the config selects, from
    one UNet call on a blank image."""
    ldm, cfg = grounder.ldm, grounder.config
    blank = torch.zeros(1, ldm.image_channels, ldm.image_size, ldm.image_size)
    z = ldm.encode_images(blank.to(device=ldm.device, dtype=ldm.dtype))
    context = grounder._uncond(1)
    tt = torch.full((1,), t, dtype=torch.long, device=ldm.device)
    found = []
    for layers in ("all", cfg.layers):
        with AttentionRecorder(ldm.unet, layers=layers, reduce_heads=True) as rec:
            rec.step = t
            ldm.unet_forward(z, tt, context)
            found.append(rec.maps())
    names = cross_attention_layers(ldm.unet)
    every = [
        {"index": names.index(m.layer), "name": m.layer, "resolution": list(m.resolution)} for m in found[0]
    ]
    return every, [m.layer for m in found[1]]


def describe(ldm: LDM, config: GroundingConfig | None = None, *, prompt=None) -> dict:
    """What a grounder with these settings will run on this model, as a JSON-ready dict: the resolved
    settings, the layers read (index, name, resolution), the inversion's timesteps and the recorded
    band, the token set, the text mask and the image geometry. Runs one UNet call, nothing more.
    """
    grounder = ZeroShotGrounder(ldm, config, prompt=prompt)
    cfg, total = grounder.config, ldm.num_train_timesteps
    out: dict[str, Any] = {
        "model": {
            "source": ldm.source,
            "family": ldm.family,
            "image_size": ldm.image_size,
            "image_channels": ldm.image_channels,
            "value_range": list(ldm.value_range),
            "prediction_type": ldm.prediction_type,
            "num_train_timesteps": total,
            "recommended": dict(getattr(ldm, "recommended", None) or {}),
        },
        "preset": cfg.preset,
        "mode": cfg.mode,
        "token_set": cfg.token_set,
        "text_attention_mask": cfg.text_attention_mask,
        "prediction_alpha": cfg.prediction_alpha,
        "gaussian": {"sigma_px": grounder._sigma(), "border": cfg.gaussian_border, "otsu": cfg.otsu},
        "device": str(grounder.ldm.device),
        "precision": cfg.precision,
        "batch_size": cfg.batch_size,
    }
    if cfg.mode == "inversion":
        timesteps, band = grounder.schedule()
        recorded = [int(timesteps[i]) for i in band]
        out["timesteps"] = {"count": len(timesteps), "spacing": cfg.spacing, "values": timesteps.tolist()}
        out["band"] = {
            "setting": list(cfg.band),
            "by": cfg.band_by,
            "steps": [band.start, band.stop - 1],
            "timesteps": [recorded[0], recorded[-1]],
            "n_recorded": len(recorded),
            "unet_evaluations_per_image": band.stop + len(recorded),
        }
        probe = recorded[len(recorded) // 2]
    else:
        levels = [min(round(v * total), total - 1) for v in cfg.noise_levels]
        out["noise_timesteps"] = levels
        probe = levels[0]
    every, chosen = _layer_resolutions(grounder, probe)
    out["layers"] = {
        "setting": cfg.layers,
        "selected": [e for e in every if e["name"] in chosen],
        "available": every,
    }
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

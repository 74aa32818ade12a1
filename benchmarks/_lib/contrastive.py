"""A contrastive image–text grounding baseline: the heatmap is a patch–sentence similarity map.

The baseline ``benchmarks/prompt_tuning_synthcxr.py`` compares LDM-attention grounding against. A
small image–text model is trained on images and their report sentences only (never the boxes), with
the two losses of GLoRIA (Huang et al., "GLoRIA: A Multimodal Global-Local Representation Learning
Framework for Label-efficient Medical Image Recognition", ICCV 2021), also used by BioViL (Boecking
et al., "Making the Most of Text Semantics to Improve Biomedical Vision-Language Processing", ECCV
2022):

* **Image encoder**: a small CNN turns the image (plus two coordinate channels, so a patch knows
  whether it lies on the image's left or right) into a grid of patch embeddings (16 × 16 at 64²); the
  image embedding is their mean.
* **Text encoder**: word embeddings plus learned positions through a small transformer; every token
  gets an embedding and the sentence embedding is their mean.
* **Global loss**: symmetric InfoNCE between image and sentence embeddings of a batch. Two rows of
  a batch that share the image or the exact sentence are not used as negatives of each other.
* **Local loss**: each word attends over the patches of an image (softmax of scaled cosine
  similarities); the attention-weighted sum of patches is the word's visual context; the cosines
  between words and their contexts are pooled per sentence with a log-sum-exp; the pooled scores
  go through the same InfoNCE over the batch.

To ground a phrase, the image is resized (shortest side) and centre cropped to the model's size,
the cosine between the phrase's sentence embedding and each patch embedding gives a coarse map,
which is bilinearly upsampled to the crop, min-max normalised, Gaussian filtered and Otsu
thresholded (:func:`trustmed.grounding.heatmaps.postprocess`), and uncropped with NaN outside the
field of view, exactly as the zero-shot LDM pipeline does.

>>> cfg = ContrastiveConfig()
>>> cfg.image_size, cfg.embed_dim, cfg.grid_size
(64, 64, 16)
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, model_validator
from torch import nn

from trustmed.config import Config
from trustmed.errors import InputError
from trustmed.grounding.device import DeviceName, Precision
from trustmed.grounding.heatmaps import CropInfo, ground_in_batches, minmax, resize_and_crop

__all__ = [
    "ContrastiveConfig",
    "ContrastiveModel",
    "ContrastiveGrounder",
    "train_contrastive",
    "info_nce",
    "local_scores",
    "contrastive_losses",
]

log = logging.getLogger(__name__)

_FORMAT = "trustmed-contrastive-grounding"


class ContrastiveConfig(Config):
    """Settings of the model and of :func:`train_contrastive` (defaults: the best found on SynthCXR).

    Attributes
    ----------
    seed : seed of the initialisation and of the batch order.
    image_size : side of the square crop the image encoder sees.
    channels : widths of the CNN stages; each halves the resolution, so the patch grid is
        ``image_size / 2**len(channels)`` per side.
    coord_channels : append the pixel coordinates as two input channels.
    embed_dim : dimension of the shared image–text space.
    text_hidden, text_layers, text_heads : width, depth and heads of the text transformer.
    max_length : tokens per sentence, start and end tokens included.
    epochs, lr, weight_decay, batch_size : AdamW training with a cosine learning-rate decay.
    temperature : softmax temperature of both InfoNCE losses (fixed).
    local_weight : weight of the local loss (the global loss has weight 1).
    attention_scale : sharpness of the word-to-patch attention (GLoRIA's γ1).
    aggregation_scale : sharpness of the log-sum-exp pooling over words (GLoRIA's γ2).
    threads : torch CPU threads.
    device : where to train (``auto``, ``cpu``, ``cuda``;
        :func:`~trustmed.grounding.device.resolve_device`); the trained model is returned on the CPU.
    precision : accelerate's mixed precision of the training (``fp32``: none; ``bf16``; ``fp16``,
        on a GPU only); the weights are float32 either way.
    """

    seed: int = 0
    image_size: int = Field(64, gt=0)
    channels: list[int] = [16, 32]
    coord_channels: bool = True
    embed_dim: int = Field(64, gt=0)
    text_hidden: int = Field(64, gt=0)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(2, ge=1)
    max_length: int = Field(24, ge=3)
    epochs: int = Field(14, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(32, ge=2)
    temperature: float = Field(0.1, gt=0)
    local_weight: float = Field(1.0, ge=0)
    attention_scale: float = Field(4.0, gt=0)
    aggregation_scale: float = Field(5.0, gt=0)
    threads: int = Field(1, ge=1)
    device: DeviceName = "auto"
    precision: Precision = "fp32"

    @model_validator(mode="after")
    def _check_geometry(self) -> ContrastiveConfig:
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels {self.channels}: expected a non-empty list of positive widths")
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**len(channels) "
                f"= {2 ** len(self.channels)}"
            )
        if self.text_hidden % self.text_heads:
            raise ValueError(
                f"text_hidden {self.text_hidden} is not divisible by text_heads {self.text_heads}"
            )
        return self

    @property
    def grid_size(self) -> int:
        """Patches per side of the image encoder's output grid."""
        return self.image_size // 2 ** len(self.channels)


def _default_tokenizer(max_length: int):
    from trustmed.data.synth.cxr import sentence_vocabulary
    from trustmed.grounding.ldm import build_tokenizer

    return build_tokenizer(sentence_vocabulary() + ["."], max_length=max_length)


class _ImageEncoder(nn.Module):
    """Strided CNN → (B, D, g, g) patch embeddings."""

    def __init__(self, cfg: ContrastiveConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1 + 2 * cfg.coord_channels
        for c in cfg.channels:
            groups = math.gcd(8, c)
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.GroupNorm(groups, c),
                nn.GELU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(groups, c),
                nn.GELU(),
            ]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.project = nn.Conv2d(c_in, cfg.embed_dim, 1)
        self.coord_channels = cfg.coord_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * 2 - 1
        if self.coord_channels:
            b, _, h, w = x.shape
            ys = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
            xs = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
            x = torch.cat([x, ys, xs], dim=1)
        return self.project(self.body(x))


class _TextEncoder(nn.Module):
    """Word + position embeddings, a pre-norm transformer, a projection → (B, T, D) token embeddings."""

    def __init__(self, cfg: ContrastiveConfig, vocab_size: int, pad_id: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, cfg.text_hidden, padding_idx=pad_id)
        self.positions = nn.Parameter(0.02 * torch.randn(cfg.max_length, cfg.text_hidden))
        layer = nn.TransformerEncoderLayer(
            cfg.text_hidden,
            cfg.text_heads,
            2 * cfg.text_hidden,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_hidden)
        self.project = nn.Linear(cfg.text_hidden, cfg.embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.tokens(input_ids) + self.positions[: input_ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        return self.project(self.norm(h))


class ContrastiveModel(nn.Module):
    """Image and text encoders into one space (see the module docstring).

    Parameters
    ----------
    config
        Architecture settings (the training settings are kept for the record).
    tokenizer
        A Hugging Face tokenizer; default: the word-level SynthCXR tokenizer
        (:func:`trustmed.grounding.ldm.build_tokenizer`) with ``config.max_length``.
    """

    def __init__(self, config: ContrastiveConfig, tokenizer: Any = None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else _default_tokenizer(config.max_length)
        torch.manual_seed(config.seed)
        self.image_encoder = _ImageEncoder(config)
        self.text_encoder = _TextEncoder(config, len(self.tokenizer), int(self.tokenizer.pad_token_id))

    @property
    def image_size(self) -> int:
        """Side of the square crop the image encoder sees."""
        return self.config.image_size

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm image embeddings (B, D) and unit-norm patch embeddings (B, g·g, D).

        ``images`` is (B, 1, image_size, image_size) in [0, 1].
        """
        patches = self.image_encoder(images).flatten(2).transpose(1, 2)
        return F.normalize(patches.mean(dim=1), dim=-1), F.normalize(patches, dim=-1)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm sentence embeddings (B, D) and unit-norm token embeddings (B, T, D)."""
        tokens = self.text_encoder(input_ids, attention_mask)
        m = attention_mask.unsqueeze(-1).to(tokens.dtype)
        sentence = (tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return F.normalize(sentence, dim=-1), F.normalize(tokens, dim=-1)

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image, patches, sentence, tokens)`` from :meth:`encode_images` and :meth:`encode_text`."""
        image, patches = self.encode_images(images)
        sentence, tokens = self.encode_text(input_ids, attention_mask)
        return image, patches, sentence, tokens

    def similarity_maps(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Cosine between each pair's sentence embedding and each of its patches, (B, g, g)."""
        _, patches = self.encode_images(images)
        sentence, _ = self.encode_text(input_ids, attention_mask)
        g = self.config.grid_size
        return torch.einsum("bpd,bd->bp", patches, sentence).view(-1, g, g)

    def save(self, folder: str | Path) -> Path:
        """Write ``model.safetensors``, ``config.json`` and the ``tokenizer/`` folder; return the folder."""
        from safetensors.torch import save_file

        from trustmed.io import atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, folder / "model.safetensors")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        meta = {"format": _FORMAT, "config": self.config.model_dump()}
        atomic_write_text(folder / "config.json", json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ContrastiveModel:
        """Load a folder written by :meth:`save` (eval mode, on the CPU)."""
        from transformers import AutoTokenizer

        from trustmed.io import read_json, read_tensors, refuse_pickles

        folder = Path(folder)
        meta_path = folder / "config.json"
        if not meta_path.is_file():
            raise InputError(f"{meta_path}: not found (expected a contrastive grounding model folder)")
        refuse_pickles(folder, what="trustmed model folder")
        meta = read_json(meta_path, what="model config")
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise InputError(f"{meta_path}: not a contrastive grounding model (format {_FORMAT!r} expected)")
        try:
            config = ContrastiveConfig.model_validate(meta.get("config", {}))
        except ValidationError as err:
            raise InputError(f"{meta_path}: invalid config: {err.errors()[0]['msg']}") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{folder / 'tokenizer'}: cannot load the tokenizer: {str(exc).splitlines()[0]}"
            ) from None
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise InputError(f"{weights}: not found (the model folder is missing its weights)")
        model = cls(config, tokenizer)
        try:
            model.load_state_dict(read_tensors(weights))
        except RuntimeError:
            raise InputError(f"{weights}: weights do not match the config in {meta_path}") from None
        return model.eval()


def info_nce(logits: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of a (B, B) image × text logit matrix whose diagonal holds the positives.

    ``ignore`` (B, B, bool) marks off-diagonal entries that are not negatives (the same image or the
    same sentence); they are left out of both softmaxes.

    >>> logits = torch.tensor([[5.0, 5.0], [0.0, 5.0]])
    >>> round(float(info_nce(logits, torch.tensor([[False, True], [True, False]]))), 6)
    0.0
    """
    if ignore is not None:
        off_diagonal = ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(ignore & off_diagonal, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def local_scores(
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    patches: torch.Tensor,
    *,
    attention_scale: float = 4.0,
    aggregation_scale: float = 5.0,
) -> torch.Tensor:
    """GLoRIA's word-level image–sentence scores, (B_images, B_texts).

    Parameters
    ----------
    tokens
        Unit-norm token embeddings (B_texts, T, D).
    token_mask
        (B_texts, T) bool: the words that count (no padding, no start/end tokens).
    patches
        Unit-norm patch embeddings (B_images, P, D).
    attention_scale
        Each word attends over an image's patches with ``softmax(attention_scale · cos)``.
    aggregation_scale
        The cosines between words and their attended contexts are pooled over the sentence's words
        with ``logsumexp(aggregation_scale · r) / aggregation_scale``.
    """
    sim = torch.einsum("tkd,ipd->tikp", tokens, patches)
    attention = torch.softmax(attention_scale * sim, dim=-1)
    context = F.normalize(torch.einsum("tikp,ipd->tikd", attention, patches), dim=-1)
    agreement = (context * tokens[:, None]).sum(dim=-1)  # (B_texts, B_images, T)
    agreement = (aggregation_scale * agreement).masked_fill(~token_mask[:, None], float("-inf"))
    return (torch.logsumexp(agreement, dim=-1) / aggregation_scale).T


def contrastive_losses(
    model: nn.Module,
    images: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    word_mask: torch.Tensor,
    ignore: torch.Tensor,
    cfg: ContrastiveConfig,
) -> dict[str, torch.Tensor]:
    """Global and local InfoNCE losses of one batch of (image, sentence) pairs, and their weighted sum."""
    image, patches, sentence, tokens = model(images, input_ids, attention_mask)
    global_loss = info_nce(image @ sentence.T / cfg.temperature, ignore)
    out = {"global": global_loss, "loss": global_loss}
    if cfg.local_weight > 0:
        scores = local_scores(
            tokens,
            word_mask,
            patches,
            attention_scale=cfg.attention_scale,
            aggregation_scale=cfg.aggregation_scale,
        )
        out["local"] = info_nce(scores / cfg.temperature, ignore)
        out["loss"] = global_loss + cfg.local_weight * out["local"]
    return out


def _content_mask(tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    return (attention_mask == 1) & ~torch.isin(input_ids, special)


def _tokenize_sentences(tokenizer, sentences: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        sentences, padding="max_length", truncation=False, max_length=max_length, return_tensors=None
    )
    for text, ids in zip(sentences, enc["input_ids"], strict=True):
        if len(ids) > max_length:
            raise InputError(f"training sentence {text!r}: {len(ids)} tokens exceed max_length={max_length}")
    ids = torch.tensor(enc["input_ids"])
    mask = torch.tensor(enc["attention_mask"])
    words = _content_mask(tokenizer, ids, mask)
    empty = [s for s, row in zip(sentences, words, strict=True) if not row.any()]
    if empty:
        raise InputError(f"training sentence {empty[0]!r}: only special or unknown tokens")
    return {"input_ids": ids, "attention_mask": mask, "word_mask": words}


def train_contrastive(cfg: ContrastiveConfig, table) -> tuple[ContrastiveModel, dict]:
    """Train a :class:`ContrastiveModel` on the images and sentences of a grounding table.

    Parameters
    ----------
    cfg
        Settings.
    table
        A grounding table (:func:`trustmed.data.mscxr.load_mscxr`, usually the training split); only
        ``path`` and ``text`` are used, never the boxes. One example is one (image, sentence) row.

    Returns
    -------
    model, summary
        The model in eval mode on the CPU in float32 (wherever it trained), and ``{"history",
        "wall_time_s", "parameters", "n_images", "n_pairs"}``.
    """
    from trustmed.grounding.device import accelerator_on, check_precision, mixed_precision, resolve_device
    from trustmed.grounding.train_ldm import prepare_images
    from trustmed.train import fit
    from trustmed.utils import seed_everything

    missing = [c for c in ("path", "text") if c not in getattr(table, "columns", [])]
    if missing:
        raise InputError(f"training table: columns {', '.join(missing)} not found")
    if len(table) < 2:
        raise InputError(f"training table: {len(table)} rows; expected at least 2 (image, sentence) pairs")
    device = resolve_device(cfg.device)
    check_precision(device, cfg.precision)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    paths = sorted(set(table["path"]))
    image_index = {p: i for i, p in enumerate(paths)}
    images = prepare_images(paths, cfg.image_size)
    texts = [str(t) for t in table["text"]]
    text_index = {t: i for i, t in enumerate(sorted(set(texts)))}
    model = ContrastiveModel(cfg)
    enc = _tokenize_sentences(model.tokenizer, texts, cfg.max_length)
    dataset = torch.utils.data.TensorDataset(
        torch.tensor([image_index[p] for p in table["path"]]),
        torch.tensor([text_index[t] for t in texts]),
        enc["input_ids"],
        enc["attention_mask"],
        enc["word_mask"],
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    if len(loader) == 0:
        loader = torch.utils.data.DataLoader(dataset, batch_size=len(dataset), shuffle=True)

    def loss_fn(net, batch):
        idx, text_id, input_ids, attention_mask, word_mask = batch
        length = int(attention_mask.sum(dim=1).max())  # columns past the longest sentence are padding
        input_ids, attention_mask, word_mask = (t[:, :length] for t in (input_ids, attention_mask, word_mask))
        x = images[idx]
        ignore = (idx[:, None] == idx[None]) | (text_id[:, None] == text_id[None])
        return contrastive_losses(net, x, input_ids, attention_mask, word_mask, ignore, cfg)["loss"]

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    accelerator = accelerator_on(device, mixed_precision(cfg.precision))
    images = images.to(accelerator.device)  # indexed by each batch's image indices, on that device
    log.info("contrastive training on %d images (%d sentences)", len(paths), len(table))
    result = fit(
        model,
        optimizer,
        loader,
        loss_fn,
        epochs=cfg.epochs,
        accelerator=accelerator,
        scheduler=scheduler,
        description="contrastive",
    )
    model = accelerator.unwrap_model(model).to("cpu", torch.float32).eval()
    summary = {
        "history": result.history,
        "wall_time_s": time.perf_counter() - t0,
        "train_time_s": result.wall_time_s,
        "parameters": {
            "image_encoder": sum(p.numel() for p in model.image_encoder.parameters()),
            "text_encoder": sum(p.numel() for p in model.text_encoder.parameters()),
            "total": sum(p.numel() for p in model.parameters()),
        },
        "n_images": len(paths),
        "n_pairs": len(table),
    }
    return model, summary


class ContrastiveGrounder:
    """Ground phrases with a :class:`ContrastiveModel`'s patch–sentence similarity (the module docstring).

    Same interface as :class:`trustmed.grounding.zero_shot.ZeroShotGrounder`, so
    :func:`~trustmed.grounding.zero_shot.ground_table` and
    :func:`~trustmed.grounding.zero_shot.score_table` work with it.

    Parameters
    ----------
    model
        A trained model (:func:`train_contrastive` or :meth:`ContrastiveModel.load`).
    sigma, sigma_reference
        Gaussian σ in pixels at a ``sigma_reference``² image, rescaled to the model's crop size.
    otsu
        Keep only the part of the map above Otsu's threshold.
    batch_size
        Pairs per forward pass.

    Attributes
    ----------
    timing_ : seconds of the last :meth:`ground` call (``total``, ``pairs``, ``seconds_per_pair``).

    Examples
    --------
    >>> grounder = ContrastiveGrounder(ContrastiveModel(ContrastiveConfig(channels=[8, 8])))
    >>> heat = grounder.ground([np.zeros((80, 64), np.float32)], ["left pleural effusion"])
    >>> heat[0].shape, bool(np.isnan(heat[0][:8]).all()), bool(np.isfinite(heat[0][8:72]).all())
    ((80, 64), True, True)
    """

    def __init__(
        self,
        model: ContrastiveModel,
        *,
        sigma: float = 2.5,
        sigma_reference: int = 512,
        otsu: bool = True,
        batch_size: int = 32,
    ):
        self.model = model
        self.sigma = sigma
        self.sigma_reference = sigma_reference
        self.otsu = otsu
        self.batch_size = batch_size

    @torch.no_grad()
    def crop_heatmaps(
        self, images: list[np.ndarray], phrases: list[str]
    ) -> tuple[torch.Tensor, list[CropInfo]]:
        """Min-max normalised similarity maps at the crop size (before filtering), for one batch."""
        from trustmed.grounding.zero_shot import tokenize_phrases

        if len(images) != len(phrases):
            raise InputError(
                f"{len(images)} images but {len(phrases)} phrases; expected one phrase per image"
            )
        size = self.model.image_size
        prepared = [resize_and_crop(im, size) for im in images]
        enc, _ = tokenize_phrases(self.model.tokenizer, list(phrases))
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device  # the model's device; the maps come back to the CPU
        coarse = self.model.similarity_maps(
            torch.stack([p[0] for p in prepared]).to(device),
            enc["input_ids"].to(device),
            enc["attention_mask"].to(device),
        )
        coarse = coarse.to("cpu", torch.float32)
        self.model.train(was_training)
        heat = F.interpolate(coarse[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        return minmax(heat), [p[1] for p in prepared]

    def ground(self, images: list[np.ndarray], phrases: list[str]) -> list[np.ndarray]:
        """Heatmaps over the original images (NaN outside the model's field of view), in [0, 1]."""
        out, self.timing_ = ground_in_batches(
            self.crop_heatmaps,
            images,
            phrases,
            batch_size=self.batch_size,
            sigma=self.sigma * self.model.image_size / self.sigma_reference,
            otsu=self.otsu,
        )
        return out

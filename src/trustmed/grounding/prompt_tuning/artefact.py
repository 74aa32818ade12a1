"""The tuned prompt: learned context vectors (and LoRA weights) bound to one base LDM.

Saved as ``prompt.safetensors`` (tensors only) and ``prompt.json`` (format, shapes, the base model's
weight fingerprint, the readout it was trained for and the training summary); loading never runs
code. Prompt files written before ``band`` was recorded load too: what they do not record is not
checked (:meth:`TunedPrompt.check_readout`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from trustmed.errors import InputError
from trustmed.grounding.ldm import LDM
from trustmed.grounding.prompt_tuning.config import PromptTuningConfig

__all__ = [
    "READOUT",
    "TunedPrompt",
    "ldm_fingerprint",
    "text_layers",
    "check_depth",
    "inject_lora",
]

FORMAT_VERSION = 1

READOUT = ("token_set", "layers", "band")
"""What a tuned prompt records about the attention it was aligned on, and the grounder checks."""


def _as_json(value):
    """``value`` as JSON reads it back (tuples become lists), to compare a config with ``prompt.json``."""
    return json.loads(json.dumps(value))


def ldm_fingerprint(ldm: LDM) -> str:
    """SHA-256 of the base model's weights (UNet, autoencoder, text encoder; adapters excluded)."""
    cached = getattr(ldm, "_fingerprint", None)
    if cached:
        return cached
    digest = hashlib.sha256()
    for part in ("unet", "autoencoder", "text_encoder"):
        state = getattr(ldm, part).state_dict()
        for key in sorted(state):
            if "lora_" in key:
                continue
            name = key.replace(".base_layer.", ".")
            digest.update(f"{part}.{name}".encode())
            digest.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    value = digest.hexdigest()
    object.__setattr__(ldm, "_fingerprint", value)
    return value


def text_layers(ldm: LDM) -> list[nn.Module]:
    """The text encoder's transformer layers (none when it is not CLIP-style)."""
    model = getattr(ldm.text_encoder, "text_model", ldm.text_encoder)  # transformers 4 nests it
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    return [] if layers is None else list(layers)


def check_depth(ldm: LDM, depth: int) -> None:
    """Deep prompts (``depth`` > 1) need a CLIP-style text encoder with at least ``depth`` layers."""
    if depth <= 1:
        return
    layers = text_layers(ldm)
    if not layers:
        raise InputError("deep prompts (depth > 1) need a CLIP-style text encoder (encoder.layers)")
    if depth > len(layers):
        raise InputError(f"depth={depth}: the text encoder has only {len(layers)} layers")


def _lora_config(rank: int, alpha: float, targets: list[str]):
    try:
        from peft import LoraConfig
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(
            "LoRA needs peft; install the grounding extra: pip install 'trustmed[grounding]'"
        ) from exc
    pattern = r".*attn2\.(" + "|".join(targets) + r")$"
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=pattern, lora_dropout=0.0, bias="none")


def inject_lora(unet: nn.Module, rank: int, alpha: float, targets: list[str]) -> nn.Module:
    from peft import inject_adapter_in_model

    return inject_adapter_in_model(_lora_config(rank, alpha, targets), unet)


class TunedPrompt(nn.Module):
    """Learned context vectors (and optional LoRA weights) for one base LDM.

    Parameters
    ----------
    n_ctx, dim
        Number and size of the context vectors (``dim`` = the text encoder's embedding size).
    meta
        What is saved in the JSON: base model fingerprint and source, the readout it was trained for
        (``token_set``, ``layers``, ``band``), LoRA settings, anatomy vocabulary, training summary.
    """

    def __init__(
        self,
        n_ctx: int,
        dim: int,
        *,
        depth: int = 1,
        output: bool = False,
        meta: dict | None = None,
        init_std: float = 0.02,
        seed: int = 0,
    ):
        super().__init__()
        if n_ctx < 1:
            raise InputError(f"n_ctx={n_ctx}: expected at least one context vector")
        if depth < 1:
            raise InputError(f"depth={depth}: expected at least 1 (the input embeddings)")
        gen = torch.Generator().manual_seed(seed)
        self.ctx = nn.Parameter(torch.randn(n_ctx, dim, generator=gen) * init_std)
        # deep prompts: their own context vectors at the input of text-encoder layers 1 … depth-1
        self.deep_ctx = (
            nn.Parameter(torch.randn(depth - 1, n_ctx, dim, generator=gen) * init_std) if depth > 1 else None
        )
        # output offsets: added to the slots' text-encoder *output*, after its final layer norm;
        # zero at the start, so training begins from the input/deep prompt alone
        self.out_ctx = nn.Parameter(torch.zeros(n_ctx, dim)) if output else None
        self.meta = dict(meta or {})
        self.lora_state: dict[str, torch.Tensor] = {}

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[0])

    def _deep(self) -> list[torch.Tensor]:
        return [] if self.deep_ctx is None else list(self.deep_ctx)

    @property
    def depth(self) -> int:
        """Number of text-encoder layers whose input carries context vectors (1: CoOp)."""
        return 1 if self.deep_ctx is None else 1 + int(self.deep_ctx.shape[0])

    @property
    def output(self) -> bool:
        """Whether the slots' text-encoder outputs carry learned offsets (``output_ctx``)."""
        return self.out_ctx is not None

    @property
    def token_set(self) -> str:
        """The tokens the prompt reads: the recorded token set, else the prompt-tuning default."""
        return self.meta.get("token_set") or PromptTuningConfig.model_fields["token_set"].default

    # ----------------------------------------------------------------------------------- text
    def tokenize(
        self,
        tokenizer,
        phrases: list[str],
        *,
        truncate: bool = False,
        words=None,
        token_set: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids with ``n_ctx`` placeholder slots, attention mask, token weights.

        The slots follow the start token (``ctx_position: front``, CoOp) or the end token
        (``end``: in a causal text encoder the context then reads the whole phrase).
        """
        from trustmed.grounding.zero_shot import tokenize_phrases

        length = int(tokenizer.model_max_length)
        if length - self.n_ctx < 3:
            raise InputError(f"n_ctx={self.n_ctx} leaves no room for a phrase in {length} tokens")
        try:
            enc, weights = tokenize_phrases(
                tokenizer,
                phrases,
                truncate=truncate,
                words=words,
                token_set=token_set or self.token_set,
                max_length=length - self.n_ctx,
            )
        except InputError as exc:
            raise InputError(
                f"{exc} (the prompt's {self.n_ctx} context vectors take {self.n_ctx} of them)"
            ) from None
        ids, mask = enc["input_ids"], enc["attention_mask"]
        after = self._after(ids, tokenizer.eos_token_id)
        slot = lambda value, like: torch.full((self.n_ctx,), value, dtype=like.dtype)  # noqa: E731
        rows = [
            [
                torch.cat([r[: a + 1], slot(fill, r), r[a + 1 :]])
                for r, a in zip(x, after.tolist(), strict=True)
            ]
            for x, fill in ((ids, int(tokenizer.pad_token_id)), (mask, 1), (weights, 0.0))
        ]
        ids, mask, weights = (torch.stack(r) for r in rows)
        if self.ctx_position == "end":  # the slots belong to the end-and-padding tokens they sit among
            end_weight = weights[torch.arange(len(ids)), after]
            weights[self._slots(ids, tokenizer.eos_token_id)] = end_weight[:, None].expand(-1, self.n_ctx)
        return ids, mask, weights

    @property
    def ctx_position(self) -> str:
        return self.meta.get("ctx_position", "front")

    def _after(self, ids: torch.Tensor, eos_id: int) -> torch.Tensor:
        """Index after which the slots go: the start token (``front``) or the end token (``end``)."""
        if self.ctx_position == "end":
            return (ids == eos_id).int().argmax(dim=1)
        return torch.zeros(len(ids), dtype=torch.long, device=ids.device)

    def _slots(self, ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, positions) of the context slots in slotted token ids."""
        if self.ctx_position == "end":
            start = (ids == eos_id).int().argmax(dim=1) + 1
        else:
            start = torch.ones(len(ids), dtype=torch.long, device=ids.device)
        positions = start[:, None] + torch.arange(self.n_ctx, device=ids.device)[None]
        return torch.arange(len(ids), device=ids.device)[:, None].expand_as(positions), positions

    def encode_ids(self, ldm: LDM, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text-encoder output with the context vectors written into the input-embedding slots.

        With output offsets the slots' outputs then get their learned ``out_ctx`` added. ``ids`` and
        ``mask`` are moved to the text encoder's device and the vectors cast to its dtype there
        (the prompt itself may stay on the CPU in float32).
        """
        embedding = ldm.text_encoder.get_input_embeddings()
        ids, mask = ids.to(embedding.weight.device), mask.to(embedding.weight.device)
        rows, positions = self._slots(ids, ldm.tokenizer.eos_token_id)

        def insert(module, inputs, output):
            out = output.clone()
            ctx = self.ctx.to(device=output.device, dtype=output.dtype)
            out[rows, positions] = ctx.unsqueeze(0).expand(len(ids), -1, -1)
            return out

        handles = [embedding.register_forward_hook(insert)]
        check_depth(ldm, self.depth)
        for layer, vectors in zip(text_layers(ldm)[1 : self.depth], self._deep(), strict=True):

            def overwrite(module, args, kwargs, vectors=vectors):
                hidden = args[0].clone()
                vectors = vectors.to(device=hidden.device, dtype=hidden.dtype)
                hidden[rows, positions] = vectors.unsqueeze(0).expand(len(ids), -1, -1)
                return (hidden, *args[1:]), kwargs

            handles.append(layer.register_forward_pre_hook(overwrite, with_kwargs=True))
        try:
            out = ldm.encode_text(ids, mask if ldm.text_attention_mask else None)
        finally:
            for handle in handles:
                handle.remove()
        if self.out_ctx is None:
            return out
        offsets = torch.zeros_like(out)
        out_ctx = self.out_ctx.to(device=out.device, dtype=out.dtype)
        offsets[rows, positions] = out_ctx.unsqueeze(0).expand(len(ids), -1, -1)
        return out + offsets

    def encode(
        self,
        ldm: LDM,
        phrases: list[str],
        *,
        truncate: bool = False,
        words=None,
        token_set: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(context (B, T, D), token weights (B, T)) for ``phrases``, as the grounder needs them."""
        ids, mask, weights = self.tokenize(
            ldm.tokenizer, phrases, truncate=truncate, words=words, token_set=token_set
        )
        return self.encode_ids(ldm, ids, mask), weights

    # ------------------------------------------------------------------------------- binding
    def check_base(self, ldm: LDM) -> None:
        """Refuse a base model other than the one the prompt was trained on."""
        expected = self.meta.get("base_fingerprint")
        actual = ldm_fingerprint(ldm)
        if expected and expected != actual:
            raise InputError(
                f"tuned prompt was trained on base model {expected[:12]} "
                f"({self.meta.get('base_source', '?')}), "
                f"not on {actual[:12]} ({ldm.source or 'this model'}); refusing to apply it"
            )
        dim = int(ldm.text_encoder.get_input_embeddings().weight.shape[1])
        if dim != self.ctx.shape[1]:
            raise InputError(
                f"tuned prompt vectors have size {self.ctx.shape[1]}, the text encoder's are {dim}"
            )

    def check_readout(self, config) -> None:
        """Refuse grounding settings that read other attention than the prompt was trained on.

        ``config`` (a :class:`~trustmed.grounding.zero_shot.GroundingConfig`) must have the
        ``token_set``, ``layers`` and ``band`` that ``prompt.json`` records. A key the file does not
        record (a prompt saved before these were recorded), or a ``None`` in ``config``, is not
        checked.

        >>> from trustmed.grounding.zero_shot import GroundingConfig
        >>> prompt = TunedPrompt(2, 8, meta={"band": [0.4, 0.6]})
        >>> prompt.check_readout(GroundingConfig())  # the same band; layers and token set not recorded
        >>> prompt.check_readout(GroundingConfig(band=(0.2, 0.4)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        trustmed.errors.InputError: tuned prompt was trained with band=[0.4, 0.6] but ... band=[0.2, 0.4]; ...
        """
        for key in READOUT:
            trained, asked = self.meta.get(key), getattr(config, key)
            if trained is None or asked is None or _as_json(trained) == _as_json(asked):
                continue
            raise InputError(
                f"tuned prompt was trained with {key}={_as_json(trained)} but the grounding config has "
                f"{key}={_as_json(asked)}; set grounding.{key}={_as_json(trained)} to use this prompt"
            )

    def apply(self, ldm: LDM) -> LDM:
        """The model to ground with: ``ldm`` itself, or a copy whose UNet carries the LoRA weights."""
        self.check_base(ldm)
        if not self.lora_state:
            return ldm
        lora = self.meta["lora"]
        unet = inject_lora(copy.deepcopy(ldm.unet), lora["rank"], lora["alpha"], lora["targets"])
        missing = set(self.lora_state) - set(unet.state_dict())
        if missing:
            raise InputError(f"tuned prompt LoRA weights do not fit the model ({len(missing)} unknown keys)")
        unet.load_state_dict(self.lora_state, strict=False)
        bound = dataclasses.replace(ldm, unet=unet.eval())
        object.__setattr__(bound, "_fingerprint", ldm_fingerprint(ldm))
        return bound

    # ------------------------------------------------------------------------------- storage
    def save(self, folder: str | Path) -> Path:
        """Write ``prompt.safetensors`` (context vectors, LoRA weights) and ``prompt.json``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cpu = lambda t: t.detach().to("cpu", torch.float32).contiguous()  # noqa: E731 - device-independent
        tensors = {"ctx": cpu(self.ctx)}
        if self.deep_ctx is not None:
            tensors["deep_ctx"] = cpu(self.deep_ctx)
        if self.out_ctx is not None:
            tensors["out_ctx"] = cpu(self.out_ctx)
        tensors.update({f"lora.{k}": cpu(v) for k, v in self.lora_state.items()})
        save_file(tensors, folder / "prompt.safetensors")
        meta = {
            "format": "trustmed-tuned-prompt",
            "version": FORMAT_VERSION,
            "n_ctx": self.n_ctx,
            "depth": self.depth,
            **self.meta,
        }
        (folder / "prompt.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return folder / "prompt.safetensors"

    @classmethod
    def load(cls, path: str | Path) -> TunedPrompt:
        """Read a tuned prompt from its folder, its ``.safetensors`` or its ``.json`` file.

        A missing, truncated or damaged file, or a pickle-format file in the folder, is an
        :class:`InputError` naming the file.
        """
        from trustmed.io import check_finite, read_json, read_tensors, refuse_pickles

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        weights, meta_path = folder / "prompt.safetensors", folder / "prompt.json"
        if path.is_file() and path.suffix == ".safetensors":
            weights, meta_path = path, path.with_suffix(".json")
        for p in (weights, meta_path):
            if not p.is_file():
                raise InputError(f"tuned prompt {p}: not found")
        refuse_pickles(folder, what="tuned-prompt folder")
        meta = read_json(meta_path, what="tuned prompt")
        if not isinstance(meta, dict) or meta.get("format") != "trustmed-tuned-prompt":
            fmt = meta.get("format") if isinstance(meta, dict) else None
            raise InputError(f"{meta_path}: not a trustmed tuned prompt (format={fmt!r})")
        tensors = read_tensors(weights, what="tuned prompt")
        check_finite(tensors, weights)
        if "ctx" not in tensors:
            raise InputError(f"{weights}: no 'ctx' tensor")
        ctx = tensors["ctx"]
        if ctx.ndim != 2 or ctx.shape[0] != meta.get("n_ctx"):
            raise InputError(
                f"{weights}: context vectors of shape {tuple(ctx.shape)} "
                f"do not match n_ctx={meta.get('n_ctx')}"
            )
        deep = tensors.get("deep_ctx")
        try:
            depth = int(meta.get("depth", 1))
        except (TypeError, ValueError):
            raise InputError(f"{meta_path}: depth must be an integer, got {meta.get('depth')!r}") from None
        if (deep is None) != (depth == 1) or (
            deep is not None and tuple(deep.shape) != (depth - 1, *ctx.shape)
        ):
            raise InputError(
                f"{weights}: deep context vectors {None if deep is None else tuple(deep.shape)} "
                f"do not match depth={depth}"
            )
        out = tensors.get("out_ctx")
        if out is not None and out.shape != ctx.shape:
            raise InputError(f"{weights}: out_ctx {tuple(out.shape)} does not match ctx {tuple(ctx.shape)}")
        for key in ("format", "version", "n_ctx", "depth"):
            meta.pop(key, None)
        prompt = cls(ctx.shape[0], ctx.shape[1], depth=depth, output=out is not None, meta=meta)
        with torch.no_grad():
            prompt.ctx.copy_(ctx)
            if deep is not None:
                prompt.deep_ctx.copy_(deep)
            if out is not None:
                prompt.out_ctx.copy_(out)
        prompt.lora_state = {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
        return prompt

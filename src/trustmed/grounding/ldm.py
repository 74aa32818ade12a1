"""Text-conditioned latent diffusion models for grounding: one interface over MONAI and diffusers.

:class:`LDM` wraps the four parts of a latent diffusion model (Rombach et al., "High-Resolution
Image Synthesis with Latent Diffusion Models", arXiv 2112.10752) — autoencoder, denoising UNet, text
encoder and tokenizer — with the noise schedule, so that zero-shot grounding (Vilouras et al.,
arXiv 2404.12920) runs the same way on:

* a **MONAI bundle-style folder** (the layout of the MONAI model-zoo chest X-ray LDM):
  ``configs/inference.json`` (``autoencoder_def``, ``network_def`` or ``diffusion_def``,
  ``scheduler``, ``scale_factor``, ``image_size``, ``image_channels``, ``value_range``,
  ``text_attention_mask``), ``models/autoencoder.*`` and ``models/diffusion_model.*``
  (``.safetensors`` or ``.pt``/``.pth``, read with ``weights_only=True``), and a CLIP
  ``text_encoder/`` + ``tokenizer/`` in Hugging Face format. The configuration is read with
  MONAI's ``ConfigParser``: ``@`` references and same-file ``%`` macros are resolved, but ``$``
  expressions are never evaluated and ``_target_`` classes never instantiated (a model folder
  does not run code); a value the model needs that is still an expression is an error;
* a **diffusers folder** (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``),
  such as a Stable Diffusion or RoentGen checkpoint.

Either folder may carry a ``trustmed.json`` with recommended grounding settings
(``{"grounding": {...}, "notes": "..."}``), kept in :attr:`LDM.recommended`.

Loading reads local files only (``local_files_only=True``); a missing part is an
:class:`~trustmed.errors.InputError` naming the path. The tiny LDM trained by trustmed on SynthCXR
ships in the MONAI layout (:func:`tiny_ldm_path`). :func:`cxr_ldm_config` and :func:`build_ldm`
build the MONAI chest X-ray LDM's block structure (at any width) in memory, with random weights.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trustmed.errors import InputError

__all__ = [
    "LDM",
    "load_ldm",
    "load_monai_folder",
    "load_diffusers_folder",
    "save_monai_folder",
    "build_ldm",
    "build_tokenizer",
    "build_text_encoder",
    "build_monai_networks",
    "cxr_ldm_config",
    "make_alphas_cumprod",
    "tiny_ldm_path",
    "make_random_monai_ldm",
    "make_random_diffusers_ldm",
]

log = logging.getLogger(__name__)

_INSTALL = "install the grounding extra: pip install 'trustmed[grounding]'"
METADATA_FILE = "trustmed.json"


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(f"transformers is not installed; {_INSTALL}") from exc
    transformers.utils.logging.disable_progress_bar()
    return transformers


@dataclass
class LDM:
    """A frozen text-to-image latent diffusion model seen through the operations grounding needs.

    Attributes
    ----------
    family : ``"monai"`` or ``"diffusers"``.
    unet, autoencoder, text_encoder : the networks (eval mode).
    tokenizer : a Hugging Face tokenizer.
    alphas_cumprod : ᾱ_t for t = 0 … T-1.
    prediction_type : ``"epsilon"`` or ``"v_prediction"``.
    latent_scale : latents are ``latent_scale · mean(E(x))``.
    image_size : side of the square input the model was trained on.
    image_channels : channels the autoencoder expects (grayscale inputs are repeated).
    value_range : intensity range of the autoencoder's input, ``(0, 1)`` or ``(-1, 1)``.
    text_attention_mask : pass the padding mask to the text encoder (as in training; Stable
        Diffusion's CLIP does not use one).
    source : the folder the model was read from (empty for an in-memory model).
    recommended : recommended grounding settings from the folder's ``trustmed.json`` (keys of
        :class:`~trustmed.grounding.zero_shot.GroundingConfig`; validated where they are applied).
    """

    family: str
    unet: nn.Module
    autoencoder: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    alphas_cumprod: torch.Tensor
    prediction_type: str
    latent_scale: float
    image_size: int
    image_channels: int = 1
    value_range: tuple[float, float] = (0.0, 1.0)
    text_attention_mask: bool = False
    source: str = ""
    recommended: dict = field(default_factory=dict)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @property
    def device(self) -> torch.device:
        """Where the UNet's weights are."""
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the UNet's weights (``float32`` unless cast by :meth:`to`)."""
        return next(self.unet.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LDM:
        """Move the UNet, autoencoder and text encoder to ``device`` and cast them to ``dtype``; returns
        ``self``. The noise schedule stays in float32 (the DDIM arithmetic is done in float32)."""
        for module in (self.unet, self.autoencoder, self.text_encoder):
            module.to(device=device, dtype=dtype)
        return self

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Latents ``z_0 = scale · mean(E(x))`` of images already in the model's range and size."""
        if self.family == "monai":
            z_mu, _ = self.autoencoder.encode(images)
            return z_mu * self.latent_scale
        return self.autoencoder.encode(images).latent_dist.mean * self.latent_scale

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-token text embeddings (B, T, D) from the last hidden layer."""
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def unet_forward(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction (ε or v, see ``prediction_type``) at timesteps ``t``."""
        if self.family == "monai":
            return self.unet(latents, timesteps=t, context=context)
        return self.unet(latents, t, encoder_hidden_states=context).sample


def make_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0015,
    beta_end: float = 0.0205,
    schedule: str = "scaled_linear_beta",
) -> torch.Tensor:
    """ᾱ_t of a linear or scaled-linear β schedule (as in MONAI and diffusers).

    >>> a = make_alphas_cumprod(10)
    >>> bool((a[1:] < a[:-1]).all()) and 0 < float(a[-1]) < float(a[0]) < 1
    True
    """
    if schedule in ("scaled_linear_beta", "scaled_linear"):
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif schedule in ("linear_beta", "linear"):
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise InputError(f"scheduler schedule {schedule!r}: expected scaled_linear_beta or linear_beta")
    return torch.cumprod(1.0 - betas, dim=0).float()


def build_tokenizer(vocabulary: list[str], max_length: int = 24):
    """A word-level tokenizer (``tokenizers`` library) over ``vocabulary``, wrapped for ``transformers``.

    Special tokens: ``<|startoftext|>`` and ``<|endoftext|>`` framing every sentence, ``<pad>`` and
    ``<unk>``. Punctuation is split off; text is lower-cased.

    >>> tok = build_tokenizer(["nodule", "right"])
    >>> tok("Right nodule")["input_ids"]
    [1, 5, 4, 2]
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    specials = ["<pad>", "<|startoftext|>", "<|endoftext|>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(vocabulary) - set(specials)))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    core.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[
            ("<|startoftext|>", vocab["<|startoftext|>"]),
            ("<|endoftext|>", vocab["<|endoftext|>"]),
        ],
    )
    return _transformers().PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def build_text_encoder(tokenizer, *, hidden_size: int = 64, layers: int = 2, heads: int = 2, seed: int = 0):
    """A small randomly initialised ``transformers`` CLIP text encoder sized for ``tokenizer``."""
    tf = _transformers()
    config = tf.CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        projection_dim=hidden_size,
    )
    torch.manual_seed(seed)
    return tf.CLIPTextModel(config)


def _clean_def(definition: dict) -> dict:
    """Network kwargs from a bundle definition: ``_target_`` and other ``_``-keys dropped."""
    out = {k: v for k, v in definition.items() if not k.startswith("_")}
    if "num_channels" in out:  # MONAI Generative Models' name for ``channels``
        out["channels"] = out.pop("num_channels")
    return out


def build_monai_networks(autoencoder_def: dict, network_def: dict) -> tuple[nn.Module, nn.Module]:
    """MONAI ``AutoencoderKL`` and ``DiffusionModelUNet`` from bundle-style kwargs."""
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    try:
        ae = AutoencoderKL(**_clean_def(autoencoder_def))
        unet = DiffusionModelUNet(**_clean_def(network_def))
    except (TypeError, ValueError) as exc:
        raise InputError(f"network definition: {exc}") from None
    return ae, unet


def _read_weights(path_stem: Path) -> dict[str, torch.Tensor]:
    """``<stem>.safetensors``, else a ``.pt``/``.pth`` state dict read with ``weights_only=True``."""
    from trustmed.io import read_tensors

    for ext in (".safetensors", ".pt", ".pth"):
        path = path_stem.with_suffix(ext)
        if path.is_file():
            return {k: v.float() for k, v in read_tensors(path).items()}
    raise InputError(
        f"{path_stem}.safetensors (or .pt/.pth) not found: the model folder is missing a component"
    )


def _load_into(module: nn.Module, state: dict, where: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError:
        if not hasattr(module, "load_old_state_dict"):
            raise InputError(f"{where}: weights do not match the network definition") from None
        try:  # weights saved by MONAI Generative Models use older parameter names
            module.load_old_state_dict(state)
        except (RuntimeError, KeyError, AssertionError):
            raise InputError(f"{where}: weights do not match the network definition") from None


def _load_text(folder: Path):
    """The tokenizer and CLIP text encoder of a model folder; a damaged part is named in the error."""
    from trustmed.io import first_line

    tf = _transformers()
    parts = {}
    for part, loader in (("tokenizer", tf.AutoTokenizer), ("text_encoder", tf.CLIPTextModel)):
        where = folder / part
        if not where.is_dir():
            raise InputError(f"{where}: folder not found (the model folder is missing its {part})")
        if part == "text_encoder" and not (where / "config.json").is_file():
            raise InputError(f"{where / 'config.json'}: not found (the text encoder's configuration)")
        try:
            parts[part] = loader.from_pretrained(where, local_files_only=True)
        except Exception as exc:  # transformers raises many types for a missing or damaged file
            name = part.replace("_", " ")
            raise InputError(f"{where}: cannot load the {name}: {first_line(exc)}") from None
    if parts["tokenizer"].pad_token is None:
        raise InputError(
            f"{folder / 'tokenizer'}: the tokenizer has no padding token (is tokenizer_config.json missing?)"
        )
    return parts["tokenizer"], parts["text_encoder"].eval()


# ----------------------------------------------------------------------------------------------
# model configuration (inference.json): bundle resolution and validation
# ----------------------------------------------------------------------------------------------

_NETWORK_TARGETS = {
    "autoencoder_def": "AutoencoderKL",
    "network_def": "DiffusionModelUNet",
    "diffusion_def": "DiffusionModelUNet",
}
_TARGET_MODULES = ("generative.networks.nets", "monai.networks.nets")
_SCHEDULES = {
    "scaled_linear_beta": "scaled_linear_beta",
    "scaled_linear": "scaled_linear_beta",
    "linear_beta": "linear_beta",
    "linear": "linear_beta",
}
_SCHEDULER_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "schedule",
    "beta_schedule",
    "prediction_type",
)
# sampling-time settings: they do not change ᾱ_t or what the UNet predicts
_SCHEDULER_IGNORED = ("clip_sample", "set_alpha_to_one", "steps_offset")
_VALUE_KEYS = ("scale_factor", "image_size", "image_channels", "value_range", "text_attention_mask")


@dataclass
class _ModelSpec:
    """What an inference.json says about the model, checked; network kwargs ready for MONAI."""

    autoencoder_def: dict
    network_def: dict
    alphas_cumprod: torch.Tensor
    prediction_type: str
    latent_scale: float
    image_size: int
    image_channels: int
    value_range: tuple[float, float]
    text_attention_mask: bool


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _check_written(value: Any, key: str, where: Any) -> None:
    """Refuse what only evaluation could turn into a value: ``$`` expressions, unresolved ``@``
    references or ``%`` macros, and nested ``_target_`` components."""
    if isinstance(value, str):
        if value.startswith("$"):
            raise InputError(
                f"{where}: key '{key}' is an expression ({_short(value)!r}); "
                "expressions are not evaluated: write the value"
            )
        if value.startswith(("@", "%")):
            raise InputError(f"{where}: key '{key}' is an unresolved reference ({_short(value)!r})")
    elif isinstance(value, dict):
        if "_target_" in value:
            raise InputError(
                f"{where}: key '{key}' is a component (_target_ {value['_target_']!r}); "
                "components are not instantiated: write the value"
            )
        for k, v in value.items():
            _check_written(v, f"{key}::{k}", where)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_written(v, f"{key}::{i}", where)


def _number(cfg: dict, key: str, default: Any, kind: type, where: Any, *, label: str | None = None):
    """``cfg[key]`` (or ``default``) as a positive int or float; anything else names the key."""
    label = label or key
    value = cfg.get(key, default)
    _check_written(value, label, where)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and kind is int:
        ok = float(value).is_integer()
    if not ok or value <= 0:
        expected = "a positive integer" if kind is int else "a positive number"
        raise InputError(f"{where}: key '{label}' = {value!r}: expected {expected}")
    return kind(value)


def _network_def(cfg: dict, key: str, where: Any) -> dict:
    """The kwargs of one network definition; its ``_target_`` (if any) must name the expected class."""
    definition = cfg.get(key)
    if not isinstance(definition, dict):
        raise InputError(f"{where}: key '{key}' not found (or not an object)")
    cls = _NETWORK_TARGETS[key]
    target = definition.get("_target_")
    if target is not None and target not in {cls} | {f"{m}.{cls}" for m in _TARGET_MODULES}:
        raise InputError(
            f"{where}: key '{key}': _target_ {target!r} is not supported "
            f"(expected {' or '.join(f'{m}.{cls}' for m in _TARGET_MODULES)})"
        )
    for k, v in definition.items():
        if not k.startswith("_"):
            _check_written(v, f"{key}::{k}", where)
    return _clean_def(definition)


def _schedule(cfg: dict, where: Any) -> tuple[torch.Tensor, str]:
    """ᾱ_t and the prediction type from the ``scheduler`` entry (MONAI or diffusers key names)."""
    sched = cfg.get("scheduler", {})
    if not isinstance(sched, dict):
        raise InputError(f"{where}: key 'scheduler' must be an object")
    for k, v in sched.items():
        if k.startswith("_") or k in _SCHEDULER_IGNORED:
            continue
        if k not in _SCHEDULER_KEYS:
            raise InputError(
                f"{where}: key 'scheduler::{k}': unknown setting (expected {', '.join(_SCHEDULER_KEYS)})"
            )
        _check_written(v, f"scheduler::{k}", where)
    if "schedule" in sched and "beta_schedule" in sched:
        raise InputError(f"{where}: key 'scheduler' gives both schedule and beta_schedule: keep one")
    name = sched.get("schedule", sched.get("beta_schedule", "scaled_linear_beta"))
    if name not in _SCHEDULES:
        raise InputError(
            f"{where}: key 'scheduler::schedule' = {name!r}: expected scaled_linear_beta (scaled_linear) "
            "or linear_beta (linear)"
        )
    steps = _number(sched, "num_train_timesteps", 1000, int, where, label="scheduler::num_train_timesteps")
    start = _number(sched, "beta_start", 0.0015, float, where, label="scheduler::beta_start")
    end = _number(sched, "beta_end", 0.0205, float, where, label="scheduler::beta_end")
    if not start < end < 1:
        raise InputError(
            f"{where}: key 'scheduler': expected 0 < beta_start < beta_end < 1, got {start}, {end}"
        )
    prediction = sched.get("prediction_type", "v_prediction")
    if prediction not in ("epsilon", "v_prediction"):
        raise InputError(
            f"{where}: key 'scheduler::prediction_type' = {prediction!r}: expected epsilon or v_prediction"
        )
    return make_alphas_cumprod(steps, start, end, _SCHEDULES[name]), prediction


def _model_spec(cfg: Any, where: Any) -> _ModelSpec:
    """Check an inference.json-style dict (``$``/``@`` already resolved or refused) and read it."""
    if not isinstance(cfg, dict):
        raise InputError(f"{where}: expected a JSON object")
    if "network_def" in cfg and "diffusion_def" in cfg:
        raise InputError(f"{where}: keys 'network_def' and 'diffusion_def' both given: keep one (the UNet)")
    unet_key = "diffusion_def" if "diffusion_def" in cfg else "network_def"
    ae_def = _network_def(cfg, "autoencoder_def", where)
    unet_def = _network_def(cfg, unet_key, where)
    alphas, prediction = _schedule(cfg, where)
    value_range = cfg.get("value_range", (0.0, 1.0))
    _check_written(value_range, "value_range", where)
    if (
        not isinstance(value_range, (list, tuple))
        or len(value_range) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)
        or not value_range[0] < value_range[1]
    ):
        raise InputError(
            f"{where}: key 'value_range' = {value_range!r}: expected [low, high] with low < high"
        )
    mask = cfg.get("text_attention_mask", False)
    _check_written(mask, "text_attention_mask", where)
    if not isinstance(mask, bool):
        raise InputError(f"{where}: key 'text_attention_mask' = {mask!r}: expected true or false")
    return _ModelSpec(
        autoencoder_def=ae_def,
        network_def=unet_def,
        alphas_cumprod=alphas,
        prediction_type=prediction,
        latent_scale=_number(cfg, "scale_factor", 0.3, float, where),
        image_size=_number(cfg, "image_size", 512, int, where),
        image_channels=_number(cfg, "image_channels", ae_def.get("in_channels", 1), int, where),
        value_range=(float(value_range[0]), float(value_range[1])),
        text_attention_mask=mask,
    )


def _refuse_file_macros(value: Any, key: str, where: Path) -> None:
    """``%`` macros that read another file are not followed (a model folder is read as one file)."""
    from monai.bundle import ConfigParser

    if isinstance(value, str) and value.startswith("%"):
        path, _ = ConfigParser.split_path_id(value[1:])
        if path:
            raise InputError(
                f"{where}: key '{key}': macro {_short(value)!r} reads another file; macros from other "
                "files are not followed: copy the value into this file"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            _refuse_file_macros(v, f"{key}::{k}" if key else str(k), where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_file_macros(v, f"{key}::{i}" if key else str(i), where)


def _resolve_bundle(cfg: dict, where: Path) -> dict:
    """The entries of a MONAI bundle config the model needs, with ``@`` references and same-file ``%``
    macros resolved by ``monai.bundle.ConfigParser``. Nothing is evaluated or instantiated: a ``$``
    expression stays a ``"$..."`` string and a component stays a dict with its ``_target_`` (both are
    refused by :func:`_model_spec` where the model needs a value)."""
    from monai.bundle import ConfigExpression, ConfigItem, ConfigParser

    from trustmed.io import first_line

    _refuse_file_macros(cfg, "", where)
    parser = ConfigParser(copy.deepcopy(cfg), globals=False)
    try:
        parser.parse()
    except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
        raise InputError(f"{where}: cannot resolve the configuration's macros: {first_line(exc)}") from None

    def plain(value: Any) -> Any:
        if isinstance(value, ConfigExpression):
            return parser.get(value.get_id())  # the expression as written
        if isinstance(value, ConfigItem):  # a component (not instantiated) or a plain item
            return plain(value.get_config())
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    def resolve(id_: str) -> Any:
        try:
            return plain(parser.get_parsed_content(id_, instantiate=False, eval_expr=False))
        except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
            raise InputError(f"{where}: key '{id_}': {first_line(exc)}") from None

    raw = parser.get()
    out = {}
    for key in (*_NETWORK_TARGETS, "scheduler", *_VALUE_KEYS):
        if key not in raw:
            continue
        if isinstance(raw[key], dict):  # entry by entry: ``_requires_`` and the like are not followed
            out[key] = {
                k: (v if k == "_target_" else resolve(f"{key}::{k}"))
                for k, v in raw[key].items()
                if k == "_target_" or not k.startswith("_")
            }
        else:
            out[key] = resolve(key)
    return out


# ----------------------------------------------------------------------------------------------
# building an LDM (in memory) and the MONAI chest X-ray LDM layout
# ----------------------------------------------------------------------------------------------


def _ldm_from_spec(spec: _ModelSpec, *, tokenizer, text_encoder, seed: int, source: str) -> LDM:
    """Randomly initialised MONAI networks for ``spec``, with the given (or a new small) text model."""
    if text_encoder is not None and tokenizer is None:
        raise InputError("build_ldm: a text_encoder was given without its tokenizer")
    dim = spec.network_def.get("cross_attention_dim")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae, unet = build_monai_networks(spec.autoencoder_def, spec.network_def)
        if tokenizer is None:
            from trustmed.data.synth.cxr import sentence_vocabulary

            tokenizer = build_tokenizer(sentence_vocabulary(), max_length=77)
        if text_encoder is None:
            hidden = int(dim or 64)
            text_encoder = build_text_encoder(
                tokenizer, hidden_size=hidden, layers=1, heads=math.gcd(hidden, 8), seed=seed
            )
    hidden = getattr(getattr(text_encoder, "config", None), "hidden_size", None)
    if dim is not None and hidden is not None and int(hidden) != int(dim):
        raise InputError(
            f"{source or 'model config'}: the text encoder's hidden size {hidden} differs from the UNet's "
            f"cross_attention_dim {dim}"
        )
    return LDM(
        family="monai",
        unet=unet.eval(),
        autoencoder=ae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        alphas_cumprod=spec.alphas_cumprod,
        prediction_type=spec.prediction_type,
        latent_scale=spec.latent_scale,
        image_size=spec.image_size,
        image_channels=spec.image_channels,
        value_range=spec.value_range,
        text_attention_mask=spec.text_attention_mask,
        source=source,
    )


def build_ldm(config: dict, *, tokenizer=None, text_encoder=None, seed: int = 0, source: str = "") -> LDM:
    """An in-memory MONAI-family LDM with randomly initialised networks from an inference.json-style dict.

    Parameters
    ----------
    config : the flat format of ``configs/inference.json`` (``autoencoder_def``, ``network_def`` or
        ``diffusion_def``, ``scheduler``, ``scale_factor``, ``image_size``, ...), e.g. from
        :func:`cxr_ldm_config`. Values must be written out (no ``$`` expressions or ``@`` references).
    tokenizer, text_encoder : the text model; ``None``: a word-level tokenizer over the SynthCXR
        vocabulary (max length 77) and a 1-layer CLIP text encoder as wide as the UNet's
        ``cross_attention_dim``. A text encoder needs its tokenizer.
    seed : seeds the random weights (the global random state is left as it was).
    source : recorded in :attr:`LDM.source` and used to name the config in errors.

    >>> ldm = build_ldm(cxr_ldm_config(width=1 / 32, image_size=64))
    >>> ldm.family, ldm.image_size, ldm.prediction_type, ldm.text_attention_mask
    ('monai', 64, 'v_prediction', False)
    """
    spec = _model_spec(config, source or "model config")
    return _ldm_from_spec(spec, tokenizer=tokenizer, text_encoder=text_encoder, seed=seed, source=source)


def _scaled_channels(channels: list[int], width: float, groups: int = 32) -> tuple[list[int], int]:
    """Channel counts × ``width`` rounded to a multiple of the scaled group count (≥ 1), and that count."""
    g = max(1, round(groups * width))
    return [max(g, round(c * width / g) * g) for c in channels], g


def cxr_ldm_config(*, width: float = 1.0, image_size: int = 512) -> dict:
    """The block structure of the MONAI model-zoo chest X-ray LDM as an inference.json-style dict.

    Autoencoder: ``AutoencoderKL`` with channels (64, 128, 128, 128), 2 residual blocks per level,
    non-local attention, 3 latent channels (512² images → 64² latents). UNet: ``DiffusionModelUNet``
    with channels (256, 512, 768), cross-attention (one head per level) at the two deeper levels,
    context width 1024 (Stable Diffusion 2.1's CLIP text encoder, used without an attention mask).
    Scheduler: v-prediction, scaled-linear β from 0.0015 to 0.0205 over 1000 steps; latent scale 0.3.

    Parameters
    ----------
    width : multiplies every channel count (autoencoder, UNet, attention heads and the context
        width, at least 8); group norms are scaled too (at least one group) so that the same block
        structure can be built small, e.g. ``width=1/32`` for tests.
    image_size : the side of the (square) training images; a multiple of 8.

    >>> cfg = cxr_ldm_config(width=1 / 32)
    >>> cfg["network_def"]["channels"], cfg["network_def"]["cross_attention_dim"]
    ([8, 16, 24], 32)
    """
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise InputError(f"cxr_ldm_config: width {width!r}: expected a positive number")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 or image_size % 8:
        raise InputError(f"cxr_ldm_config: image_size {image_size!r}: expected a positive multiple of 8")
    ae_channels, ae_groups = _scaled_channels([64, 128, 128, 128], width)
    unet_base, heads_base = [256, 512, 768], [0, 512, 768]
    unet_channels, unet_groups = _scaled_channels(unet_base, width)
    head_channels = []
    for c, h, s in zip(unet_base, heads_base, unet_channels, strict=True):
        heads = c // h if h else 0
        head_channels.append(0 if not heads else (s // heads if s % heads == 0 else s))
    return {
        "autoencoder_def": {
            "_target_": "monai.networks.nets.AutoencoderKL",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "latent_channels": 3,
            "channels": ae_channels,
            "num_res_blocks": 2,
            "norm_num_groups": ae_groups,
            "norm_eps": 1e-6,
            "attention_levels": [False, False, False, False],
            "with_encoder_nonlocal_attn": True,
            "with_decoder_nonlocal_attn": True,
        },
        "network_def": {
            "_target_": "monai.networks.nets.DiffusionModelUNet",
            "spatial_dims": 2,
            "in_channels": 3,
            "out_channels": 3,
            "channels": unet_channels,
            "num_res_blocks": 2,
            "attention_levels": [False, True, True],
            "norm_num_groups": unet_groups,
            "norm_eps": 1e-6,
            "resblock_updown": False,
            "num_head_channels": head_channels,
            "with_conditioning": True,
            "transformer_num_layers": 1,
            "cross_attention_dim": max(8, round(1024 * width)),
        },
        "scheduler": {
            "num_train_timesteps": 1000,
            "beta_start": 0.0015,
            "beta_end": 0.0205,
            "schedule": "scaled_linear_beta",
            "prediction_type": "v_prediction",
        },
        "scale_factor": 0.3,
        "image_size": image_size,
        "image_channels": 1,
        "value_range": [0.0, 1.0],
        "text_attention_mask": False,
    }


# ----------------------------------------------------------------------------------------------
# model folders
# ----------------------------------------------------------------------------------------------


def _read_recommended(folder: Path) -> dict:
    """The ``grounding`` settings of ``folder/trustmed.json`` (empty without the file)."""
    from trustmed.io import read_json

    path = folder / METADATA_FILE
    if not path.is_file():
        return {}
    data = read_json(path, what="model metadata")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with 'grounding' (and optional 'notes')")
    for key in data:
        if key not in ("grounding", "notes"):
            raise InputError(f"{path}: unknown key {key!r} (expected 'grounding' or 'notes')")
    grounding = data.get("grounding", {})
    if not isinstance(grounding, dict):
        raise InputError(f"{path}: key 'grounding' must be an object of grounding settings")
    if not isinstance(data.get("notes", ""), str):
        raise InputError(f"{path}: key 'notes' must be text")
    return dict(grounding)


def load_monai_folder(folder: str | Path) -> LDM:
    """Load a MONAI bundle-style LDM folder (see the module docstring for the layout).

    ``configs/inference.json`` is read as JSON, then resolved with ``monai.bundle.ConfigParser``
    without evaluating expressions or instantiating components; the networks are built from the
    definitions and the weights loaded into them.
    """
    from trustmed.io import read_json

    folder = Path(folder)
    cfg_path = folder / "configs" / "inference.json"
    if not cfg_path.is_file():
        raise InputError(f"{cfg_path}: not found (expected a MONAI bundle-style LDM folder)")
    cfg = read_json(cfg_path, what="model config")
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    spec = _model_spec(_resolve_bundle(cfg, cfg_path), cfg_path)
    recommended = _read_recommended(folder)
    weights = {name: _read_weights(folder / "models" / name) for name in ("autoencoder", "diffusion_model")}
    tokenizer, text_encoder = _load_text(folder)
    ldm = _ldm_from_spec(spec, tokenizer=tokenizer, text_encoder=text_encoder, seed=0, source=str(folder))
    _load_into(ldm.autoencoder, weights["autoencoder"], folder / "models" / "autoencoder")
    _load_into(ldm.unet, weights["diffusion_model"], folder / "models" / "diffusion_model")
    ldm.recommended = recommended
    return ldm


def save_monai_folder(
    folder: str | Path,
    *,
    autoencoder: nn.Module,
    unet: nn.Module,
    text_encoder: nn.Module,
    tokenizer,
    config: dict,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write an LDM in the MONAI bundle-style layout that :func:`load_monai_folder` reads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    for name, module in (("autoencoder", autoencoder), ("diffusion_model", unet)):
        state = {k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()}
        save_file(state, folder / "models" / f"{name}.safetensors")
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


_DIFFUSERS_PARTS = (
    ("unet", "UNet2DConditionModel", "config.json"),
    ("vae", "AutoencoderKL", "config.json"),
    ("scheduler", "DDIMScheduler", "scheduler_config.json"),
)


def load_diffusers_folder(folder: str | Path) -> LDM:
    """Load a diffusers text-to-image folder (unet, vae, text_encoder, tokenizer, scheduler).

    Stable Diffusion and RoentGen-style checkpoints: the VAE takes images in [-1, 1], the text encoder
    is run without an attention mask, and the scheduler's β schedule and prediction type are used.
    """
    folder = Path(folder)
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(f"diffusers is not installed; {_INSTALL}") from exc
    from trustmed.io import first_line, read_json

    parts = {}
    for part, cls_name, config_name in _DIFFUSERS_PARTS:
        if not (folder / part).is_dir():
            raise InputError(f"{folder / part}: folder not found (the diffusers model is missing its {part})")
        config_path = folder / part / config_name
        if not isinstance(read_json(config_path, what=f"the {part}'s configuration"), dict):
            raise InputError(f"{config_path}: expected a JSON object")
        try:
            parts[part] = getattr(diffusers, cls_name).from_pretrained(folder / part, local_files_only=True)
        except Exception as exc:  # diffusers raises many types for a missing or damaged file
            raise InputError(f"{folder / part}: cannot load the {part}: {first_line(exc)}") from None
    unet, vae, sched = parts["unet"], parts["vae"], parts["scheduler"]
    if sched.config.prediction_type not in ("epsilon", "v_prediction"):
        raise InputError(
            f"{folder / 'scheduler' / 'scheduler_config.json'}: prediction_type "
            f"{sched.config.prediction_type!r}: expected epsilon or v_prediction"
        )
    recommended = _read_recommended(folder)
    tokenizer, text_encoder = _load_text(folder)
    return LDM(
        family="diffusers",
        unet=unet.eval(),
        autoencoder=vae.eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        alphas_cumprod=sched.alphas_cumprod.float(),
        prediction_type=sched.config.prediction_type,
        latent_scale=float(vae.config.scaling_factor),
        image_size=int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1),
        image_channels=int(vae.config.in_channels),
        value_range=(-1.0, 1.0),
        source=str(folder),
        recommended=recommended,
    )


def load_ldm(folder: str | Path) -> LDM:
    """Load an LDM from a local folder, recognising the MONAI bundle or the diffusers layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"model folder {folder}: not found")
    if (folder / "configs" / "inference.json").is_file():
        return load_monai_folder(folder)
    if (folder / "unet").is_dir() or (folder / "model_index.json").is_file():
        return load_diffusers_folder(folder)
    raise InputError(
        f"model folder {folder}: expected configs/inference.json (MONAI bundle) or unet/ (diffusers)"
    )


def tiny_ldm_path() -> Path:
    """Folder of the tiny LDM trained by trustmed on SynthCXR and shipped with the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "tiny_ldm"


def make_random_monai_ldm(folder: str | Path, *, vocabulary: list[str] | None = None, seed: int = 0) -> Path:
    """Write a randomly initialised, very small LDM in the MONAI layout (for tests and examples).

    >>> import tempfile
    >>> ldm = load_ldm(make_random_monai_ldm(tempfile.mkdtemp()))
    >>> ldm.family, ldm.image_size, ldm.prediction_type
    ('monai', 32, 'v_prediction')
    """
    from trustmed.data.synth.cxr import sentence_vocabulary

    torch.manual_seed(seed)
    ae_def = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 1,
        "channels": [4, 8],
        "latent_channels": 3,
        "num_res_blocks": 1,
        "attention_levels": [False, False],
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
        "norm_num_groups": 4,
    }
    net_def = {
        "spatial_dims": 2,
        "in_channels": 3,
        "out_channels": 3,
        "channels": [8, 16],
        "attention_levels": [True, True],
        "num_res_blocks": 1,
        "num_head_channels": [8, 8],
        "with_conditioning": True,
        "cross_attention_dim": 16,
        "norm_num_groups": 4,
    }
    ae, unet = build_monai_networks(ae_def, net_def)
    tokenizer = build_tokenizer(vocabulary or sentence_vocabulary(), max_length=16)
    text_encoder = build_text_encoder(tokenizer, hidden_size=16, layers=1, heads=2, seed=seed)
    config = {
        "autoencoder_def": ae_def,
        "network_def": net_def,
        "scheduler": {"num_train_timesteps": 1000, "prediction_type": "v_prediction"},
        "scale_factor": 1.0,
        "image_size": 32,
        "image_channels": 1,
        "value_range": [0.0, 1.0],
        "text_attention_mask": True,  # as these test models have always been read
    }
    return save_monai_folder(
        folder,
        autoencoder=ae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        config=config,
        dtype=torch.float32,
    )


def make_random_diffusers_ldm(
    folder: str | Path,
    *,
    vocabulary: list[str] | None = None,
    seed: int = 0,
    image_channels: int = 3,
    prediction_type: str = "epsilon",
) -> Path:
    """Write a randomly initialised, very small Stable-Diffusion-style diffusers folder (for tests).

    The layout of a RoentGen-like checkpoint: ``unet/`` (``UNet2DConditionModel``, cross-attention
    at both levels and in the middle block), ``vae/`` (``AutoencoderKL``, ``image_channels`` in and
    out, 16² images → 8² latents), a CLIP ``text_encoder/`` and word-level ``tokenizer/`` over
    ``vocabulary`` (default: the SynthCXR vocabulary), ``scheduler/`` (``DDIMScheduler``,
    scaled-linear β, ``prediction_type``) and ``model_index.json``; safetensors weights, about
    0.4 MB in all.

    >>> import tempfile
    >>> ldm = load_ldm(make_random_diffusers_ldm(tempfile.mkdtemp()))
    >>> ldm.family, ldm.image_size, ldm.image_channels, ldm.prediction_type
    ('diffusers', 16, 3, 'epsilon')
    """
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(f"diffusers is not installed; {_INSTALL}") from exc
    from trustmed.data.synth.cxr import sentence_vocabulary

    if prediction_type not in ("epsilon", "v_prediction"):
        raise InputError(f"prediction_type {prediction_type!r}: expected epsilon or v_prediction")
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=16,
            attention_head_dim=2,
            norm_num_groups=4,
        )
        vae = diffusers.AutoencoderKL(
            in_channels=image_channels,
            out_channels=image_channels,
            block_out_channels=(4, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=4,
            sample_size=16,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
        )
        tokenizer = build_tokenizer(vocabulary or sentence_vocabulary(), max_length=16)
        text_encoder = build_text_encoder(tokenizer, hidden_size=16, layers=1, heads=2, seed=seed)
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        part.save_pretrained(folder / name, safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    tokenizer.save_pretrained(folder / "tokenizer")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder

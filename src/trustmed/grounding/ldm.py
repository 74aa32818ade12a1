"""Text-conditioned latent diffusion models for grounding: one interface over MONAI and diffusers.

:class:`LDM` wraps the four parts of a latent diffusion model (Rombach et al., "High-Resolution
Image Synthesis with Latent Diffusion Models", arXiv 2112.10752) — autoencoder, denoising UNet, text
encoder and tokenizer — with the noise schedule, so that zero-shot grounding (Vilouras et al.,
arXiv 2404.12920) runs the same way on:

* a **MONAI bundle-style folder** (the layout of the MONAI model-zoo chest X-ray LDM):
  ``configs/inference.json`` (``autoencoder_def``, ``network_def``, ``scheduler``,
  ``scale_factor``, ``image_size``, ``image_channels``, ``value_range``, ``text_attention_mask``),
  ``models/autoencoder.*`` and ``models/diffusion_model.*`` (``.safetensors`` or ``.pt``/``.pth``, read with
  ``weights_only=True``), and a CLIP ``text_encoder/`` + ``tokenizer/`` in Hugging Face format;
* a **diffusers folder** (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``).

Loading reads local files only (``local_files_only=True``); a missing part is an
:class:`~trustmed.errors.InputError` naming the path. The tiny LDM trained by trustmed on SynthCXR
ships in the MONAI layout (:func:`tiny_ldm_path`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
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
    "build_tokenizer",
    "build_text_encoder",
    "build_monai_networks",
    "make_alphas_cumprod",
    "tiny_ldm_path",
    "make_random_monai_ldm",
]

log = logging.getLogger(__name__)

_INSTALL = "install the grounding extra: pip install 'trustmed[grounding]'"


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

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

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
    except TypeError as exc:
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


def load_monai_folder(folder: str | Path) -> LDM:
    """Load a MONAI bundle-style LDM folder (see the module docstring for the layout)."""
    folder = Path(folder)
    cfg_path = folder / "configs" / "inference.json"
    if not cfg_path.is_file():
        raise InputError(f"{cfg_path}: not found (expected a MONAI bundle-style LDM folder)")
    from trustmed.io import read_json

    cfg = read_json(cfg_path, what="model config")
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    for key in ("autoencoder_def", "network_def"):
        if not isinstance(cfg.get(key), dict):
            raise InputError(f"{cfg_path}: key '{key}' not found (or not an object)")
    ae, unet = build_monai_networks(cfg["autoencoder_def"], cfg["network_def"])
    _load_into(ae, _read_weights(folder / "models" / "autoencoder"), folder / "models" / "autoencoder")
    _load_into(
        unet, _read_weights(folder / "models" / "diffusion_model"), folder / "models" / "diffusion_model"
    )
    tokenizer, text_encoder = _load_text(folder)
    sched = cfg.get("scheduler", {})
    alphas = make_alphas_cumprod(
        sched.get("num_train_timesteps", 1000),
        sched.get("beta_start", 0.0015),
        sched.get("beta_end", 0.0205),
        sched.get("schedule", "scaled_linear_beta"),
    )
    return LDM(
        family="monai",
        unet=unet.eval(),
        autoencoder=ae.eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        alphas_cumprod=alphas,
        prediction_type=sched.get("prediction_type", "v_prediction"),
        latent_scale=float(cfg.get("scale_factor", 0.3)),
        image_size=int(cfg.get("image_size", 512)),
        image_channels=int(
            cfg.get("image_channels", _clean_def(cfg["autoencoder_def"]).get("in_channels", 1))
        ),
        value_range=tuple(cfg.get("value_range", (0.0, 1.0))),
        text_attention_mask=bool(cfg.get("text_attention_mask", True)),
        source=str(folder),
    )


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


def load_diffusers_folder(folder: str | Path) -> LDM:
    """Load a diffusers text-to-image folder (unet, vae, text_encoder, tokenizer, scheduler)."""
    folder = Path(folder)
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(f"diffusers is not installed; {_INSTALL}") from exc
    from trustmed.io import first_line

    parts = {}
    for part, cls in (
        ("unet", diffusers.UNet2DConditionModel),
        ("vae", diffusers.AutoencoderKL),
        ("scheduler", diffusers.DDIMScheduler),
    ):
        if not (folder / part).is_dir():
            raise InputError(f"{folder / part}: folder not found (the diffusers model is missing its {part})")
        try:
            parts[part] = cls.from_pretrained(folder / part, local_files_only=True)
        except Exception as exc:  # diffusers raises many types for a missing or damaged file
            raise InputError(f"{folder / part}: cannot load the {part}: {first_line(exc)}") from None
    unet, vae, sched = parts["unet"], parts["vae"], parts["scheduler"]
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

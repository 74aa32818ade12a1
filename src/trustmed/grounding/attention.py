"""Recording the cross-attention probabilities of a text-conditioned diffusion UNet.

Zero-shot phrase grounding (Vilouras et al., "Zero-Shot Medical Phrase Grounding with Off-the-shelf
Diffusion Models", arXiv 2404.12920) reads the cross-attention probabilities
``softmax(Q Kᵀ / √d)`` between image positions (queries) and prompt tokens (keys) inside the
denoising UNet. :class:`AttentionRecorder` captures them through public extension points only:

* diffusers ``UNet2DConditionModel``: a recording attention processor installed with
  ``set_attn_processor`` on the ``attn2`` (cross-attention) layers; every original processor is put
  back on exit, also when the body raises;
* MONAI ``DiffusionModelUNet``: a forward hook on each cross-attention block's ``drop_weights``
  dropout, whose input is the (batch, heads, HW, tokens) probability tensor; hooks are removed on
  exit (blocks using PyTorch's fused attention are switched to the explicit path while recording).

With ``keep_graph=True`` the recorded tensors stay in the autograd graph, so a loss on the attention
(prompt tuning) back-propagates into whatever produced the queries and keys.

>>> import torch
>>> from monai.networks.nets import DiffusionModelUNet
>>> unet = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 8),
...     attention_levels=(False, True), num_res_blocks=1, num_head_channels=(0, 8),
...     with_conditioning=True, cross_attention_dim=4, norm_num_groups=4)
>>> with AttentionRecorder(unet) as rec:
...     _ = unet(torch.zeros(1, 1, 8, 8), timesteps=torch.tensor([1]), context=torch.zeros(1, 3, 4))
>>> [tuple(m.probs.shape) for m in rec.maps()][:1]
[(1, 1, 4, 4, 3)]
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trustmed.errors import InputError

__all__ = ["AttentionMap", "AttentionRecorder", "cross_attention_layers", "model_family"]


@dataclass
class AttentionMap:
    """Cross-attention probabilities of one layer at one call: ``probs`` is (B, heads, h, w, tokens)."""

    layer: str
    step: int | None
    probs: torch.Tensor

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.probs.shape[2]), int(self.probs.shape[3])


def model_family(model: nn.Module) -> str:
    """``"diffusers"`` for a model with ``set_attn_processor``, ``"monai"`` for MONAI's diffusion UNet."""
    if hasattr(model, "set_attn_processor") and hasattr(model, "attn_processors"):
        return "diffusers"
    if any(name.endswith("attn2") and hasattr(m, "drop_weights") for name, m in model.named_modules()):
        return "monai"
    raise InputError(
        f"{type(model).__name__}: no cross-attention layers found; expected a diffusers "
        "UNet2DConditionModel or a MONAI DiffusionModelUNet with conditioning"
    )


def cross_attention_layers(model: nn.Module) -> list[str]:
    """Names of the cross-attention (``attn2``) modules of ``model``, in module-registration order."""
    marker = "processor" if model_family(model) == "diffusers" else "drop_weights"
    return [n for n, m in model.named_modules() if n.endswith("attn2") and hasattr(m, marker)]


def _spatial_shape(n_queries: int, latent_hw: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) of a feature map with ``n_queries`` positions, found by halving the latent size."""
    if latent_hw is not None:
        h, w = latent_hw
        while h >= 1 and w >= 1:
            if h * w == n_queries:
                return h, w
            if h * w < n_queries:
                break
            h, w = math.ceil(h / 2), math.ceil(w / 2)
    side = math.isqrt(n_queries)
    if side * side != n_queries:
        raise RuntimeError(f"cannot infer the spatial shape of {n_queries} attention queries")
    return side, side


class _RecordingProcessor:
    """diffusers attention processor: the explicit attention of ``AttnProcessor``, probabilities kept."""

    def __init__(self, recorder: AttentionRecorder, layer: str):
        self.recorder = recorder
        self.layer = layer

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, n_tokens, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, n_tokens, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        query = attn.head_to_batch_dim(query)
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.recorder._record(self.layer, probs.view(batch, attn.heads, *probs.shape[1:]))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class AttentionRecorder:
    """Context manager that records cross-attention probabilities during UNet forward passes.

    Parameters
    ----------
    model
        A diffusers ``UNet2DConditionModel`` or a MONAI ``DiffusionModelUNet`` with conditioning.
    layers
        Which cross-attention layers to keep: ``"all"``; ``"bottleneck"`` (the layers at the smallest
        spatial resolution seen, i.e. around the middle block); an ``int`` resolution (layers whose
        feature map is that many pixels high); a list of layer names / glob patterns
        (see :func:`cross_attention_layers`); or a list of ``int`` indices into that list (the
        zero-shot paper's code selects layers 3, 4, 6 and 7 of the chest X-ray LDM this way).
    keep_graph
        Keep the recorded tensors in the autograd graph (for losses on the attention); otherwise they
        are detached.
    batch_slice
        Keep only these batch entries (e.g. ``slice(n, 2 * n)`` for the conditional half of a
        classifier-free batch). Can be changed between forward passes.
    reduce_heads
        Store the mean over heads instead of every head (less memory).

    Attributes
    ----------
    step : value stored with each recorded map (e.g. the diffusion timestep); set it before a call.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: str | int | Sequence[str] = "all",
        keep_graph: bool = False,
        batch_slice: slice | None = None,
        reduce_heads: bool = False,
    ):
        self.model = model
        self.layers = layers
        self.keep_graph = keep_graph
        self.batch_slice = batch_slice
        self.reduce_heads = reduce_heads
        self.step: int | None = None
        self._records: list[AttentionMap] = []
        self._handles: list = []
        self._saved_processors: dict | None = None
        self._flash_blocks: list[nn.Module] = []
        self._latent_hw: tuple[int, int] | None = None
        self.family = model_family(model)
        self.layer_names = self._select_names(cross_attention_layers(model))

    def _select_names(self, names: list[str]) -> list[str]:
        if isinstance(self.layers, str | int) and (
            self.layers in ("all", "bottleneck") or isinstance(self.layers, int)
        ):
            return names
        patterns = [self.layers] if isinstance(self.layers, str) else list(self.layers)
        if patterns and all(isinstance(p, int) and not isinstance(p, bool) for p in patterns):
            bad = [p for p in patterns if not 0 <= p < len(names)]
            if bad:
                raise InputError(
                    f"layers={self.layers!r}: index {bad[0]} out of range; the model has {len(names)} "
                    f"cross-attention layers ({', '.join(names)})"
                )
            return [names[p] for p in sorted(set(patterns))]
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) or n == p for p in patterns)]
        if not chosen:
            raise InputError(
                f"layers={self.layers!r}: no cross-attention layer matches; available: {', '.join(names)}"
            )
        return chosen

    def _pre_forward(self, module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("x"))
        if isinstance(sample, torch.Tensor) and sample.ndim >= 4:
            self._latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))

    def _record(self, layer: str, probs: torch.Tensor) -> None:
        h, w = _spatial_shape(probs.shape[2], self._latent_hw)
        if isinstance(self.layers, int) and not isinstance(self.layers, bool) and h != self.layers:
            return
        if self.batch_slice is not None:
            probs = probs[self.batch_slice]
            if probs.shape[0] == 0:
                return
        if not self.keep_graph:
            probs = probs.detach()
        if self.reduce_heads:
            probs = probs.mean(dim=1, keepdim=True)
        self._records.append(
            AttentionMap(layer, self.step, probs.reshape(*probs.shape[:2], h, w, probs.shape[-1]))
        )

    def __enter__(self) -> AttentionRecorder:
        self._records = []
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
            if self.family == "diffusers":
                self._saved_processors = dict(self.model.attn_processors)
                processors = dict(self._saved_processors)
                for name in self.layer_names:
                    processors[f"{name}.processor"] = _RecordingProcessor(self, name)
                self.model.set_attn_processor(processors)
            else:
                modules = dict(self.model.named_modules())
                for name in self.layer_names:
                    block = modules[name]
                    if getattr(block, "use_flash_attention", False):
                        block.use_flash_attention = False
                        self._flash_blocks.append(block)
                    self._handles.append(block.drop_weights.register_forward_hook(self._hook_for(name)))
        except BaseException:
            self._restore()
            raise
        return self

    def _hook_for(self, name: str):
        def hook(module, inputs, output):
            self._record(name, inputs[0])

        return hook

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._saved_processors is not None:
            self.model.set_attn_processor(self._saved_processors)
            self._saved_processors = None
        for block in self._flash_blocks:
            block.use_flash_attention = True
        self._flash_blocks = []

    def __exit__(self, *exc) -> None:
        self._restore()

    def clear(self) -> None:
        """Forget the maps recorded so far (the recorder stays active)."""
        self._records = []

    def maps(self) -> list[AttentionMap]:
        """Recorded maps, in call order, restricted to the selected layers."""
        if self.layers == "bottleneck" and self._records:
            smallest = min(m.resolution[0] * m.resolution[1] for m in self._records)
            return [m for m in self._records if m.resolution[0] * m.resolution[1] == smallest]
        return list(self._records)

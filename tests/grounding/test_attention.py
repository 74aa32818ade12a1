"""Attention capture: recorded probabilities equal a manual softmax(QKᵀ/√d), outputs are unchanged,
processors/hooks are restored even on an exception, gradients flow with keep_graph."""

from __future__ import annotations

import math

import pytest
import torch

from trustmed.errors import InputError
from trustmed.grounding.attention import AttentionRecorder, cross_attention_layers

diffusers = pytest.importorskip("diffusers")


def _tiny_diffusers_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=12,
        attention_head_dim=2,
        norm_num_groups=4,
    ).eval()


def _tiny_monai_unet():
    from monai.networks.nets import DiffusionModelUNet

    torch.manual_seed(0)
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=3,
        channels=(8, 16),
        attention_levels=(True, True),
        num_res_blocks=1,
        num_head_channels=(4, 8),
        with_conditioning=True,
        cross_attention_dim=12,
        norm_num_groups=4,
    ).eval()


def _manual_capture(unet, family):
    """Inputs of every attn2 module, to recompute softmax(QKᵀ/√d) by hand."""
    inputs, handles = {}, []
    for name, module in unet.named_modules():
        if name.endswith("attn2"):

            def pre(mod, args, kwargs, name=name):
                x = args[0] if args else kwargs["hidden_states"]
                ctx = kwargs.get("encoder_hidden_states", kwargs.get("context"))
                inputs[name] = (mod, x, ctx)

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
    return inputs, handles


def _manual_probs(mod, x, ctx, family):
    if family == "diffusers":
        heads = mod.heads
        q, k = mod.to_q(x), mod.to_k(ctx)
    else:
        heads = mod.num_heads
        q, k = mod.to_q(x), mod.to_k(ctx)
    b, n, d = q.shape
    q = q.view(b, n, heads, d // heads).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d // heads).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)


@pytest.mark.parametrize("family", ["diffusers", "monai"])
def test_recorded_probabilities_match_manual_softmax_and_outputs_unchanged(family):
    unet = _tiny_diffusers_unet() if family == "diffusers" else _tiny_monai_unet()
    channels = 4 if family == "diffusers" else 3
    torch.manual_seed(1)
    z = torch.randn(2, channels, 8, 8)
    t = torch.tensor([10, 500])
    ctx = torch.randn(2, 5, 12)

    def forward():
        if family == "diffusers":
            return unet(z, t, encoder_hidden_states=ctx).sample
        return unet(z, timesteps=t, context=ctx)

    with torch.no_grad():
        reference = forward()
        inputs, handles = _manual_capture(unet, family)
        with AttentionRecorder(unet) as rec:
            recorded = forward()
        for h in handles:
            h.remove()
    torch.testing.assert_close(recorded, reference, rtol=1e-5, atol=1e-6)
    maps = rec.maps()
    assert sorted(m.layer for m in maps) == sorted(cross_attention_layers(unet))
    assert len(maps) >= 3
    for m in maps:
        mod, x, c = inputs[m.layer]
        manual = _manual_probs(mod, x, c, family)
        b, heads, h, w, tokens = m.probs.shape
        assert (b, tokens) == (2, 5) and h * w == manual.shape[2]
        torch.testing.assert_close(m.probs.reshape(b, heads, h * w, tokens), manual, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.probs.sum(-1), torch.ones_like(m.probs.sum(-1)))
    assert {m.resolution for m in maps} == {(8, 8), (4, 4)}


def test_diffusers_processors_restored_even_on_exception():
    unet = _tiny_diffusers_unet()
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    with pytest.raises(RuntimeError, match="boom"), AttentionRecorder(unet):
        assert any(type(p).__name__ == "_RecordingProcessor" for p in unet.attn_processors.values())
        attn1 = [k for k, p in unet.attn_processors.items() if "attn1" in k]
        assert all(type(unet.attn_processors[k]) is before[k] for k in attn1)
        raise RuntimeError("boom")
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_monai_hooks_removed_and_flash_restored_on_exception():
    unet = _tiny_monai_unet()
    blocks = [m for n, m in unet.named_modules() if n.endswith("attn2")]
    blocks[0].use_flash_attention = True
    with pytest.raises(RuntimeError, match="boom"), AttentionRecorder(unet):
        assert all(len(b.drop_weights._forward_hooks) == 1 for b in blocks)
        assert blocks[0].use_flash_attention is False
        raise RuntimeError("boom")
    assert all(len(b.drop_weights._forward_hooks) == 0 for b in blocks)
    assert blocks[0].use_flash_attention is True
    assert len(unet._forward_pre_hooks) == 0


@pytest.mark.parametrize("family", ["diffusers", "monai"])
def test_layer_selection_by_name_resolution_and_bottleneck(family):
    unet = _tiny_diffusers_unet() if family == "diffusers" else _tiny_monai_unet()
    channels = 4 if family == "diffusers" else 3
    z, t, ctx = torch.randn(1, channels, 8, 8), torch.tensor([3]), torch.randn(1, 4, 12)

    def run(**kw):
        with torch.no_grad(), AttentionRecorder(unet, **kw) as rec:
            if family == "diffusers":
                unet(z, t, encoder_hidden_states=ctx)
            else:
                unet(z, timesteps=t, context=ctx)
        return rec.maps()

    names = cross_attention_layers(unet)
    assert [m.layer for m in run(layers=[names[0]])] == [names[0]]
    assert {m.resolution for m in run(layers=4)} == {(4, 4)}
    bottleneck = run(layers="bottleneck")
    assert bottleneck and {m.resolution for m in bottleneck} == {(4, 4)}
    assert len(run(reduce_heads=True)[0].probs.shape) == 5 and run(reduce_heads=True)[0].probs.shape[1] == 1
    with pytest.raises(InputError, match="no cross-attention layer matches"):
        AttentionRecorder(unet, layers=["nope*"])


def test_keep_graph_lets_gradients_reach_the_context():
    unet = _tiny_monai_unet()
    ctx = torch.randn(1, 4, 12, requires_grad=True)
    with AttentionRecorder(unet, keep_graph=True, batch_slice=slice(1, 2)) as rec:
        unet(torch.randn(2, 3, 8, 8), timesteps=torch.tensor([5, 5]), context=ctx.expand(2, -1, -1))
    maps = rec.maps()
    assert all(m.probs.shape[0] == 1 for m in maps)
    loss = sum(m.probs[..., 1].mean() for m in maps)
    loss.backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    with AttentionRecorder(unet) as rec:
        unet(torch.randn(1, 3, 8, 8), timesteps=torch.tensor([5]), context=ctx)
    assert not rec.maps()[0].probs.requires_grad


def test_rejects_a_model_without_cross_attention():
    with pytest.raises(InputError, match="no cross-attention layers"):
        AttentionRecorder(torch.nn.Linear(2, 2))

"""coVAE: the ordering loss, the model, the alpha schedule and training through the shared loop."""

import math

import numpy as np
import pytest
import torch

from trustmed.causal import (
    AlphaSchedule,
    CausalTrainConfig,
    CoVAE,
    encode,
    fit_covae,
    ordering_loss,
    permute_latents,
    score_order,
)
from trustmed.config import apply_values
from trustmed.data.synth.anm import make_latent_anm
from trustmed.errors import InputError


def train_config(**values) -> CausalTrainConfig:
    """The library's training config with ``values`` set (a bad value is an InputError naming its key)."""
    return apply_values(CausalTrainConfig(), values)


def test_ordering_loss_prefers_the_causal_order():
    data = make_latent_anm(n=256, d=4, observed_dim=None, expected_edges=4, seed=3)
    z = torch.as_tensor(data.z, dtype=torch.float64)
    true = ordering_loss(z[:, data.order])
    reverse = ordering_loss(z[:, data.order[::-1]])
    assert true < reverse
    assert true.ndim == 0 and math.isfinite(float(true))


def test_ordering_loss_matches_its_definition_and_has_gradients():
    from trustmed.causal import stein_hessian_diag

    z = torch.randn(
        64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True
    )
    expected = 0.0
    for k in (2, 3):
        v = stein_hessian_diag(z[:, :k]).var(dim=0)
        expected = expected - torch.log_softmax(-v / 0.5, dim=0)[k - 1]
    loss = ordering_loss(z, tau=0.5)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(InputError, match="d >= 2"):
        ordering_loss(torch.randn(32, 1))


def test_ordering_loss_residual_criterion():
    from trustmed.causal.stein import nested_residual_leafness

    data = make_latent_anm(n=256, d=4, observed_dim=None, expected_edges=4, seed=3)
    z = torch.as_tensor(data.z, dtype=torch.float64)
    true = ordering_loss(z[:, data.order], criterion="residual", tau=0.1)
    assert true < ordering_loss(z[:, data.order[::-1]], criterion="residual", tau=0.1)
    # ... and it does not care about the latents' scales (the Hessian criterion does).
    scaled = z[:, data.order] * torch.tensor([0.1, 3.0, 0.5, 20.0], dtype=torch.float64)
    torch.testing.assert_close(ordering_loss(scaled, criterion="residual", tau=0.1), true, rtol=0, atol=1e-8)

    zz = z[:64, :3].clone().requires_grad_()
    crit = nested_residual_leafness(zz)
    expected = -torch.log_softmax(-crit[0, :2] / 0.2, 0)[1] - torch.log_softmax(-crit[1] / 0.2, 0)[2]
    loss = ordering_loss(zz, criterion="residual", tau=0.2)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(zz.grad).all() and zz.grad.abs().sum() > 0
    with pytest.raises(InputError, match="criterion"):
        ordering_loss(z, criterion="hessain")
    with pytest.raises(InputError, match="scale_aware"):
        ordering_loss(z, criterion="residual", scale_aware=True)


def test_mixture_prior_is_a_normalised_density():
    model = CoVAE(input_dim=4, latent_dim=2, prior="gmm", n_components=3)
    prior = model.prior
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=prior.logits),
        torch.distributions.Independent(torch.distributions.Normal(prior.means, prior.log_std.exp()), 1),
    )
    z = torch.randn(10, 2)
    assert torch.allclose(prior.log_prob(z), ref.log_prob(z), atol=1e-5)


def test_model_shapes_vectors_and_images():
    vec = CoVAE(input_dim=7, latent_dim=3)
    terms = vec(torch.randn(16, 7), alpha=1.0)
    assert set(terms) == {"loss", "recon", "kl", "order"}
    assert terms["order"].requires_grad and torch.isfinite(terms["order"])
    plain = vec(torch.randn(16, 7))["order"]  # alpha = 0: the plain VAE, no Stein solve
    assert plain == 0 and not plain.requires_grad
    img = CoVAE(None, 4, image_size=16, channels=1, hidden=16, prior="gmm")
    x = torch.rand(12, 1, 16, 16)
    assert img.reconstruct(x).shape == x.shape
    assert img.encode(x)[0].shape == (12, 4)
    assert torch.isfinite(img(x, alpha=2.0)["loss"])
    with pytest.raises(InputError, match="multiple of 8"):
        CoVAE(None, 2, image_size=20)
    with pytest.raises(InputError, match="exactly one"):
        CoVAE(4, 2, image_size=16)


def test_alpha_schedule_state_roundtrip():
    s = AlphaSchedule(4.0, warmup_steps=3, ramp_steps=2)
    values = [s.step() for _ in range(4)]
    assert values == [0.0, 0.0, 0.0, 2.0]
    restored = AlphaSchedule(4.0, warmup_steps=3, ramp_steps=2)
    restored.load_state_dict(s.state_dict())
    assert restored.step() == s.step() == 4.0


def _tiny_anm():
    data = make_latent_anm(n=320, d=3, observed_dim=8, seed=0)
    x = (data.x - data.x.mean(0)) / data.x.std(0)
    return data, x


def test_fit_covae_trains_and_is_deterministic():
    torch.set_num_threads(1)
    data, x = _tiny_anm()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = CoVAE(8, 3, hidden=32)
        result = fit_covae(
            model, x[:256], x_val=x[256:], seed=0, config=train_config(epochs=10, batch_size=32, lr=1e-2,
            alpha=5.0, warmup_epochs=2, ramp_epochs=2),
        )  # fmt: skip
        runs.append((result, encode(model, x)))
    result, latents = runs[0]
    assert [round(r["alpha"], 6) for r in result.history] == [0.0, 0.0, 2.5] + [5.0] * 7
    assert model.prior is not None  # the default, learnable mixture prior
    assert result.history[-1]["val_recon"] < result.history[0]["val_recon"]
    assert {"val_recon", "val_kl", "val_order"} <= set(result.history[-1])
    np.testing.assert_array_equal(latents, runs[1][1])
    assert latents.shape == (320, 3)


def test_fit_covae_bad_input():
    _, x = _tiny_anm()
    bad = x.copy()
    bad[5, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fit_covae(CoVAE(8, 3), bad, config=train_config(epochs=1, batch_size=64))
    with pytest.raises(InputError, match="at least 8"):
        fit_covae(CoVAE(8, 3), x, config=train_config(epochs=1, batch_size=4, alpha=1.0))
    model = CoVAE(8, 3)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(InputError, match="criterion"):  # refused before any step, not after warm-up
        fit_covae(model, x, config=train_config(epochs=2, batch_size=64, alpha=1.0, warmup_epochs=1,
                                                criterion="leaf"))  # fmt: skip
    with pytest.raises(InputError, match="scale_aware"):
        fit_covae(model, x, config=train_config(epochs=2, batch_size=64, alpha=1.0, criterion="residual",
                                                scale_aware=True))  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_permute_latents_renumbers_units_and_optimizer_state():
    torch.manual_seed(0)
    x = torch.randn(16, 6)
    order = [2, 0, 3, 1]
    for kwargs in ({"input_dim": 6}, {"image_size": 8}):
        model = CoVAE(latent_dim=4, prior="gmm", hidden=16, **kwargs)
        inputs = x if "input_dim" in kwargs else torch.randn(16, 1, 8, 8)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model(inputs)["loss"].backward()
        opt.step()
        mu, logvar = model.encode(inputs)
        z = torch.randn(16, 4)
        decoded, prior = model.decode(z), model.prior.log_prob(z)
        moments = opt.state[model.encoder[-1].weight]["exp_avg"].clone()
        permute_latents(model, order, opt)
        mu2, logvar2 = model.encode(inputs)
        torch.testing.assert_close(mu2, mu[:, order])
        torch.testing.assert_close(logvar2, logvar[:, order])
        torch.testing.assert_close(model.decode(z[:, order]), decoded)
        torch.testing.assert_close(model.prior.log_prob(z[:, order]), prior)
        rows = order + [i + 4 for i in order]
        torch.testing.assert_close(opt.state[model.encoder[-1].weight]["exp_avg"], moments[rows])
    with pytest.raises(InputError, match="permutation"):
        permute_latents(model, [0, 0, 1, 2])


@pytest.mark.parametrize("criterion", ["hessian", "residual"])
def test_fit_covae_reorder_puts_units_in_score_order(monkeypatch, criterion):
    import trustmed.causal.covae as covae_mod

    torch.set_num_threads(1)
    _, x = _tiny_anm()
    seen = []
    original = covae_mod.permute_latents

    calls = [0]

    class Counting(CoVAE):
        def forward(self, x, **kwargs):
            calls[0] += 1
            return super().forward(x, **kwargs)

    def spy(model, order, optimizer=None):
        assert calls[0] == 16  # 2 warm-up epochs of 256 / 32 steps, before the first step after them
        seen.append((list(order), encode(model, x[:256])))
        original(model, order, optimizer)
        seen.append(encode(model, x[:256]))
        model.train()

    monkeypatch.setattr(covae_mod, "permute_latents", spy)
    torch.manual_seed(0)
    model = Counting(8, 3, hidden=32)
    config = train_config(epochs=4, batch_size=32, lr=1e-2, alpha=0.0, warmup_epochs=2, reorder=True,
                          criterion=criterion)  # fmt: skip
    fit_covae(model, x[:256], config=config)
    assert len(seen) == 2  # once, at the end of warm-up
    (order, before), after = seen
    assert order == score_order(before, criterion=criterion)
    np.testing.assert_allclose(after, before[:, order], atol=1e-6)
    with pytest.raises(InputError, match="warmup_epochs"):
        fit_covae(CoVAE(8, 3), x[:256], config=train_config(epochs=1, batch_size=32, warmup_epochs=0,
                                                            reorder=True))  # fmt: skip

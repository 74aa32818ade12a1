"""coVAE: a variational autoencoder whose latents are pushed to follow a causal order.

"A Causal Ordering Prior for Unsupervised Representation Learning" (Kori, Sanchez, Vilouras,
Glocker & Tsaftaris, arXiv 2307.05704). Data are assumed to come from a latent additive noise model
with Gaussian noise, observed through a piecewise-affine map. For such a model, ``z_j`` is a leaf of
the causal graph exactly when the diagonal entry ``d^2 log p(z) / dz_j^2`` of the Hessian of the
latent log-density is constant (SCORE, Rolland et al., arXiv 2203.04413). The latent index is taken as
the causal order (``z_1`` root ... ``z_d`` last) and the ordering loss asks, for every prefix
``z_1..z_k`` (``k = d .. 2``), that ``z_k`` be the most leaf-like:

``v_j^(k) = Var_batch[H_jj(z_1..z_k)]``,  ``L_order = sum_k -log softmax(-v^(k) / tau)_k``

with the Hessian diagonal from the Stein estimator (:func:`trustmed.causal.stein.nested_hessian_diag`).
With ``scale_aware=True`` the variance is divided by the squared batch mean of ``H_jj``, which makes
``v`` invariant to rescaling a latent (the plain variance shrinks as ``1/c^4`` when ``z_j`` grows by
``c``, a direction the encoder can exploit). With ``criterion="residual"`` ``v`` is instead the
scale-free ``1 - corr(score_j, residual_j)^2`` of
:func:`trustmed.causal.stein.nested_residual_leafness` (a leaf's score is linear in its regression
residual; NoGAM, Montagna et al., arXiv 2304.03265). The total loss is ``-ELBO + alpha * L_order``;
``alpha = 0`` is the plain VAE and ``beta > 1`` the beta-VAE.

The decoder is piecewise affine (LeakyReLU MLP, or LeakyReLU convolutions for images). The prior is,
by default, a learnable Gaussian mixture (``prior="gmm"``, 8 components), the identifiable choice of
"Identifiability of deep generative models without auxiliary information" (Kivva et al., NeurIPS 2022,
arXiv 2206.10044): its latents may be dependent, as a causal model's are. ``prior="normal"`` gives
``N(0, I)``, whose factorised KL term pushes the latents towards independence, against the premise of
a causal order among them; it is kept for comparison.

Training (:func:`trustmed.causal.pipeline.fit_covae`) lets ``alpha`` follow :class:`AlphaSchedule`:
zero during warm-up (the VAE first learns to reconstruct), then a linear ramp to its final value.

The ordering loss takes the latent index as the order, but its gradient cannot swap two latent units:
it can only reshape them. :func:`reorder_by_score` therefore permutes the units into the order SCORE
finds on the posterior means (:func:`permute_latents`); training does it once, at the end of warm-up,
before ``alpha`` ramps up.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustmed.causal.ordering import score_order
from trustmed.causal.stein import check_leaf_criterion, nested_hessian_diag, nested_residual_leafness
from trustmed.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "CoVAE",
    "CoVAEConfig",
    "AlphaSchedule",
    "check_order_settings",
    "ordering_loss",
    "permute_latents",
    "encode",
    "reconstruct",
    "reorder_by_score",
]


def check_order_settings(criterion: str, scale_aware: bool) -> None:
    """Refuse an unknown leaf ``criterion``, or ``scale_aware`` with the (scale-free) residual one.

    >>> check_order_settings("residual", scale_aware=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    trustmed.errors.InputError: scale_aware: only for criterion='hessian' ...
    """
    check_leaf_criterion(criterion)
    if criterion == "residual" and scale_aware:
        raise InputError("scale_aware: only for criterion='hessian' (the residual criterion is scale-free)")


def ordering_loss(
    z: Tensor,
    *,
    tau: float = 1.0,
    eta: float = 1e-3,
    scale_aware: bool = False,
    criterion: str = "hessian",
) -> Tensor:
    """The causal-ordering loss on a batch of latents ``z`` (n, d); the latent index is the order.

    ``criterion="hessian"`` (the default) measures how leaf-like ``z_j`` is by ``Var[H_jj]``
    (divided by ``mean(H_jj)^2`` with ``scale_aware=True``); ``criterion="residual"`` by the
    scale-free ``1 - corr(score_j, residual_j)^2`` of
    :func:`trustmed.causal.stein.nested_residual_leafness` (values in [0, 1], so a smaller ``tau``
    such as 0.1 suits it).

    Examples
    --------
    Latents whose last coordinate is a leaf of a nonlinear ANM score lower than the reversed order:

    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randn(256, generator=g, dtype=torch.float64)
    >>> b = torch.sin(2 * a) + 0.4 * torch.randn(256, generator=g, dtype=torch.float64)
    >>> bool(ordering_loss(torch.stack([a, b], 1)) < ordering_loss(torch.stack([b, a], 1)))
    True
    """
    if z.ndim != 2 or z.shape[1] < 2:
        raise InputError(f"z: the ordering loss needs shape (n, d) with d >= 2, got {tuple(z.shape)}")
    check_order_settings(criterion, scale_aware)
    if criterion == "residual":
        var = nested_residual_leafness(z, eta)  # (d-1, d), nan beyond each prefix
    else:
        hess = nested_hessian_diag(z, eta, min_prefix=2)  # (d-1, n, d)
        var = hess.var(dim=1)
        if scale_aware:
            var = var / hess.mean(dim=1).pow(2).clamp_min(1e-12)
    d = z.shape[1]
    ks = torch.arange(2, d + 1, device=z.device)
    inside = torch.arange(d, device=z.device)[None, :] < ks[:, None]
    logits = (-var / tau).masked_fill(~inside, float("-inf"))
    return F.cross_entropy(logits, ks - 1, reduction="sum")


@dataclass
class CoVAEConfig:
    """Architecture of a :class:`CoVAE` (stored in ``model.json`` next to the weights).

    Its defaults are those of :class:`CoVAE` and of ``trustmed causal fit``'s ``model`` section. The
    default ``prior`` is the Gaussian mixture (``"gmm"``); ``"normal"`` is ``N(0, I)``.
    """

    input_dim: int | None = None
    image_size: int | None = None
    channels: int = 1
    latent_dim: int = 5
    hidden: int = 64
    depth: int = 2
    prior: str = "gmm"
    n_components: int = 8
    slope: float = 0.2


class _MixturePrior(nn.Module):
    def __init__(self, latent_dim: int, n_components: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.means = nn.Parameter(torch.randn(n_components, latent_dim, generator=g))
        self.log_std = nn.Parameter(torch.zeros(n_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(n_components))

    def log_prob(self, z: Tensor) -> Tensor:
        diff = (z[:, None, :] - self.means[None]) / self.log_std.exp()[None]
        comp = (
            -0.5 * diff.pow(2).sum(-1) - self.log_std.sum(-1)[None] - 0.5 * z.shape[1] * math.log(2 * math.pi)
        )
        return torch.logsumexp(comp + F.log_softmax(self.logits, 0)[None], dim=1)


def _mlp(sizes: list[int], slope: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


class CoVAE(nn.Module):
    """VAE with a piecewise-affine decoder and a Gaussian or Gaussian-mixture prior.

    Give ``input_dim`` for vectors (MLP encoder/decoder) or ``image_size`` (a multiple of 8) and
    ``channels`` for images (convolutional encoder/decoder).

    Examples
    --------
    >>> model = CoVAE(input_dim=6, latent_dim=3)
    >>> terms = model.loss_terms(torch.randn(32, 6), alpha=1.0)
    >>> sorted(terms)
    ['kl', 'loss', 'order', 'recon']
    """

    def __init__(
        self,
        input_dim: int | None = None,
        latent_dim: int = CoVAEConfig.latent_dim,
        *,
        image_size: int | None = None,
        channels: int = CoVAEConfig.channels,
        hidden: int = CoVAEConfig.hidden,
        depth: int = CoVAEConfig.depth,
        prior: str = CoVAEConfig.prior,
        n_components: int = CoVAEConfig.n_components,
        slope: float = CoVAEConfig.slope,
    ):
        super().__init__()
        if (input_dim is None) == (image_size is None):
            raise InputError("CoVAE: give exactly one of input_dim (vectors) or image_size (images)")
        if latent_dim < 1:
            raise InputError(f"latent_dim: expected at least 1, got {latent_dim}")
        if prior not in ("normal", "gmm"):
            raise InputError(f"prior: expected 'normal' or 'gmm', got {prior!r}")
        self.config = CoVAEConfig(
            input_dim, image_size, channels, latent_dim, hidden, depth, prior, n_components, slope
        )
        if input_dim is not None:
            self.encoder = _mlp([input_dim] + [hidden] * depth + [2 * latent_dim], slope)
            self.decoder = _mlp([latent_dim] + [hidden] * depth + [input_dim], slope)
        else:
            if image_size % 8:
                raise InputError(f"image_size: expected a multiple of 8, got {image_size}")
            self.encoder, self.decoder = self._conv_nets(image_size, channels, latent_dim, hidden, slope)
        self.log_obs_std = nn.Parameter(torch.zeros(()))
        self.prior = _MixturePrior(latent_dim, n_components) if prior == "gmm" else None

    @staticmethod
    def _conv_nets(size: int, channels: int, latent: int, hidden: int, slope: float):
        c = hidden // 2
        side = size // 8
        encoder = nn.Sequential(
            nn.Conv2d(channels, c, 4, 2, 1), nn.LeakyReLU(slope),
            nn.Conv2d(c, hidden, 4, 2, 1), nn.LeakyReLU(slope),
            nn.Conv2d(hidden, hidden, 4, 2, 1), nn.LeakyReLU(slope),
            nn.Flatten(), nn.Linear(hidden * side * side, 2 * latent),
        )  # fmt: skip
        decoder = nn.Sequential(
            nn.Linear(latent, hidden * side * side), nn.LeakyReLU(slope),
            nn.Unflatten(1, (hidden, side, side)),
            nn.ConvTranspose2d(hidden, hidden, 4, 2, 1), nn.LeakyReLU(slope),
            nn.ConvTranspose2d(hidden, c, 4, 2, 1), nn.LeakyReLU(slope),
            nn.ConvTranspose2d(c, channels, 4, 2, 1),
        )  # fmt: skip
        return encoder, decoder

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance, each ``(n, latent_dim)``."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruction from the posterior mean."""
        return self.decode(self.encode(x)[0])

    def forward(self, x: Tensor, **loss_kwargs) -> dict[str, Tensor]:
        """The loss terms of :meth:`loss_terms` (so that distributed wrappers see a forward call)."""
        return self.loss_terms(x, **loss_kwargs)

    def _kl(self, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        if self.prior is None:
            return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        log_q = -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)
        return log_q - self.prior.log_prob(z)

    def loss_terms(
        self,
        x: Tensor,
        *,
        alpha: float = 0.0,
        beta: float = 1.0,
        tau: float = 1.0,
        eta: float = 1e-3,
        scale_aware: bool = False,
        criterion: str = "hessian",
    ) -> dict[str, Tensor]:
        """Per-sample mean ``recon`` (Gaussian NLL), ``kl``, the batch ``order`` loss and ``loss``.

        ``loss = recon + beta * kl + alpha * order``: the ELBO terms are means over the batch and the
        ordering loss is one number per batch (a sum over the ``d - 1`` prefixes).
        """
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon_x = self.decode(z)
        var = (2 * self.log_obs_std).exp()
        sq = (x - recon_x).pow(2).flatten(1)
        recon = 0.5 * (sq / var + 2 * self.log_obs_std + math.log(2 * math.pi)).sum(-1).mean()
        kl = self._kl(z, mu, logvar).mean()
        loss = recon + beta * kl
        order = torch.zeros((), device=x.device, dtype=x.dtype)
        if alpha > 0 and self.latent_dim >= 2:
            order = ordering_loss(z, tau=tau, eta=eta, scale_aware=scale_aware, criterion=criterion)
            loss = loss + alpha * order
        return {"loss": loss, "recon": recon, "kl": kl, "order": order}


class AlphaSchedule:
    """``alpha`` per optimiser step: 0 during warm-up, a linear ramp, then ``alpha``.

    >>> s = AlphaSchedule(10.0, warmup_steps=2, ramp_steps=4)
    >>> [s.step() for _ in range(8)]
    [0.0, 0.0, 2.5, 5.0, 7.5, 10.0, 10.0, 10.0]
    """

    def __init__(self, alpha: float, warmup_steps: int = 0, ramp_steps: int = 0):
        self.alpha, self.warmup_steps, self.ramp_steps = float(alpha), int(warmup_steps), int(ramp_steps)
        self.steps = 0
        self.last = 0.0

    def value(self) -> float:
        after = self.steps - self.warmup_steps
        if after < 0:
            return 0.0
        if self.ramp_steps <= 0 or after >= self.ramp_steps:
            return self.alpha
        return self.alpha * (after + 1) / self.ramp_steps

    def step(self) -> float:
        """The ``alpha`` of this step (also kept in ``last``); advances the schedule."""
        self.last = self.value()
        self.steps += 1
        return self.last

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])


@torch.no_grad()
def permute_latents(model: CoVAE, order, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Renumber the latent units in place: new unit ``i`` is old unit ``order[i]``.

    The encoder's output rows (means and log-variances), the decoder's input columns, the mixture
    prior's per-dimension parameters and, if given, the optimiser's per-parameter state (e.g. Adam's
    moments) are permuted alike, so the model computes the same function up to the order of its
    latents.

    >>> model = CoVAE(input_dim=4, latent_dim=3)
    >>> x = torch.randn(5, 4)
    >>> before = model.encode(x)[0]
    >>> permute_latents(model, [2, 0, 1])
    >>> torch.allclose(model.encode(x)[0], before[:, [2, 0, 1]])
    True
    """
    d = model.latent_dim
    perm = torch.as_tensor(list(order), dtype=torch.long)
    if sorted(perm.tolist()) != list(range(d)):
        raise InputError(f"order: expected a permutation of 0..{d - 1}, got {list(order)}")
    encoder_out = model.encoder[-1]
    decoder_in = model.decoder[0]
    rows = torch.cat([perm, perm + d])
    moves: list[tuple[Tensor, int, Tensor]] = [  # (parameter, dimension, index)
        (encoder_out.weight, 0, rows),
        (encoder_out.bias, 0, rows),
        (decoder_in.weight, 1, perm),
    ]
    if model.prior is not None:
        moves += [(model.prior.means, 1, perm), (model.prior.log_std, 1, perm)]
    for param, dim, index in moves:
        index = index.to(param.device)
        param.copy_(param.index_select(dim, index))
        state = optimizer.state.get(param, {}) if optimizer is not None else {}
        for value in state.values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value.copy_(value.index_select(dim, index))


def _as_tensor(x, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return t


@torch.no_grad()
def encode(model: CoVAE, x, *, batch_size: int = 512) -> np.ndarray:
    """Posterior means of ``x`` as a NumPy array ``(n, latent_dim)``."""
    model.eval()
    data = _as_tensor(x, "x")
    device = next(model.parameters()).device
    chunks = [
        model.encode(data[i : i + batch_size].to(device))[0].cpu() for i in range(0, len(data), batch_size)
    ]
    return torch.cat(chunks).numpy()


@torch.no_grad()
def reconstruct(model: CoVAE, x, *, batch_size: int = 512) -> np.ndarray:
    """Reconstructions of ``x`` from the posterior means, as a NumPy array shaped like ``x``."""
    model.eval()
    data = _as_tensor(x, "x")
    device = next(model.parameters()).device
    chunks = [
        model.reconstruct(data[i : i + batch_size].to(device)).cpu() for i in range(0, len(data), batch_size)
    ]
    return torch.cat(chunks).numpy()


def reorder_by_score(
    model: CoVAE, x, optimizer: torch.optim.Optimizer | None = None, *, eta: float, criterion: str
) -> list[int]:
    """Put the latent units of ``model`` in SCORE's order of the posterior means of ``x``; return it.

    SCORE (:func:`trustmed.causal.score_order`, with leaf ``criterion`` and ridge ``eta``) orders the
    posterior means of up to 1024 samples of ``x``; :func:`permute_latents` then renumbers the units
    (and the optimiser's state) into that order. The model's train/eval mode is kept.

    >>> model = CoVAE(input_dim=4, latent_dim=2)
    >>> order = reorder_by_score(model, torch.randn(64, 4), eta=1e-3, criterion="hessian")
    >>> sorted(order)
    [0, 1]
    """
    was_training = model.training
    order = score_order(encode(model, x[:1024]), eta=eta, criterion=criterion)
    model.train(was_training)  # encode() leaves the model in eval mode
    permute_latents(model, order, optimizer)
    log.info("latent units reordered into SCORE's order %s", order)
    return order

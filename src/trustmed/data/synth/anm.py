"""Latent additive noise models (ANM) with a piecewise-affine mixing, deterministic by seed.

The generative assumption of coVAE, "A Causal Ordering Prior for Unsupervised Representation
Learning" (Kori et al., arXiv 2307.05704): latents follow an ANM on a DAG,
``z_j = f_j(z_pa(j)) + eps_j`` with Gaussian ``eps_j``, and the observation is ``x = g(z)`` for an
injective piecewise-affine ``g`` (a random LeakyReLU network). The DAG is Erdős–Rényi with the
variables in a random causal order; each mechanism is a random one-hidden-layer tanh network per
parent, summed (an additive model, as in SCORE's benchmarks).

:func:`save_anm` writes ``x.npy`` (observations), ``z.npy`` (true latents), ``adjacency.csv``
(``A[i, j] = 1`` for ``z_i -> z_j``) and ``meta.json`` (causal order, edges, generator settings)
into one folder; :func:`load_anm` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trustmed.errors import InputError
from trustmed.io import atomic_write_bytes, write_json

__all__ = [
    "ANMDataset",
    "random_dag",
    "sample_anm",
    "leaky_relu_mixing",
    "make_latent_anm",
    "save_anm",
    "load_anm",
]


@dataclass
class ANMDataset:
    """Observations ``x`` (n, D), latents ``z`` (n, d), DAG ``adjacency`` (d, d), ``order`` root first."""

    x: np.ndarray
    z: np.ndarray
    adjacency: np.ndarray
    order: list[int]
    meta: dict = field(default_factory=dict)


def random_dag(d: int, expected_edges: float, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Erdős–Rényi DAG on ``d`` nodes with ``expected_edges`` edges on average, in a random order.

    >>> adj, order = random_dag(5, 4, np.random.default_rng(0))
    >>> bool(all(adj[order[j], order[i]] == 0 for i in range(5) for j in range(i, 5)))
    True
    """
    if d < 1:
        raise InputError(f"d: expected at least 1 latent variable, got {d}")
    pairs = d * (d - 1) / 2
    p = min(1.0, expected_edges / pairs) if pairs else 0.0
    lower = np.triu(rng.random((d, d)) < p, k=1).astype(int)
    order = rng.permutation(d).tolist()
    adj = np.zeros((d, d), dtype=int)
    for a in range(d):
        for b in range(d):
            if lower[a, b]:
                adj[order[a], order[b]] = 1
    return adj, order


def _topological(adj: np.ndarray) -> list[int]:
    indeg = adj.sum(0).astype(int)
    ready = [j for j in range(len(adj)) if indeg[j] == 0]
    out: list[int] = []
    while ready:
        j = ready.pop(0)
        out.append(j)
        for c in np.flatnonzero(adj[j]):
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(int(c))
    if len(out) != len(adj):
        raise InputError("adjacency: the graph has a cycle")
    return out


def sample_anm(
    adj: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    noise_std: tuple[float, float] = (0.4, 0.8),
    hidden: int = 10,
) -> np.ndarray:
    """Sample ``n`` draws of an additive Gaussian-noise model on the DAG ``adj``.

    Each parent contributes ``sum_m w_m tanh(a_m z_p + b_m)`` (a random tanh network); roots are
    pure noise. Noise standard deviations are drawn uniformly from ``noise_std``.
    """
    adj = np.asarray(adj)
    d = adj.shape[0]
    sigma = rng.uniform(*noise_std, size=d)
    z = np.zeros((n, d))
    for j in _topological(adj):
        parents = np.flatnonzero(adj[:, j])
        value = np.zeros(n)
        for p in parents:
            a = rng.uniform(1.0, 3.0, size=hidden) * rng.choice([-1.0, 1.0], size=hidden)
            b = rng.normal(0.0, 1.0, size=hidden)
            w = rng.normal(0.0, 1.0, size=hidden) / np.sqrt(hidden)
            value += np.tanh(np.outer(z[:, p], a) + b) @ w * 1.5
        z[:, j] = value + sigma[j] * rng.normal(size=n)
    return z


def leaky_relu_mixing(
    z: np.ndarray, dim: int, rng: np.random.Generator, *, layers: int = 2, slope: float = 0.2
) -> np.ndarray:
    """Map ``z`` (n, d) to ``dim`` dimensions by a random injective LeakyReLU network (``dim >= d``)."""
    n, d = z.shape
    if dim < d:
        raise InputError(
            f"observed_dim: {dim} is smaller than the latent size {d}; the mixing must be injective"
        )
    h = z @ np.linalg.qr(rng.normal(size=(dim, d)))[0].T * np.sqrt(dim / d)
    for _ in range(layers - 1):
        h = np.where(h > 0, h, slope * h)
        weight = rng.normal(size=(dim, dim)) / np.sqrt(dim)
        h = h @ weight.T
    return h


def make_latent_anm(
    n: int = 2000,
    d: int = 5,
    observed_dim: int | None = 20,
    *,
    expected_edges: float | None = None,
    seed: int = 0,
    noise_std: tuple[float, float] = (0.4, 0.8),
    mixing_layers: int = 2,
) -> ANMDataset:
    """A latent ANM dataset: DAG, latents, and observations through a LeakyReLU mixing.

    Parameters
    ----------
    n, d : samples and latent variables.
    observed_dim : int or None
        Observation size ``D``; ``None`` observes the latents directly (``x = z``).
    expected_edges : float or None
        Expected number of DAG edges (default ``d``).
    seed : int
        Everything (DAG, mechanisms, noise, mixing) is drawn from ``numpy.random.default_rng(seed)``.

    Examples
    --------
    >>> data = make_latent_anm(n=100, d=3, observed_dim=6, seed=1)
    >>> data.x.shape, data.z.shape, data.adjacency.shape
    ((100, 6), (100, 3), (3, 3))
    >>> bool(np.array_equal(make_latent_anm(n=100, d=3, observed_dim=6, seed=1).x, data.x))
    True
    """
    if n < 2:
        raise InputError(f"n: expected at least 2 samples, got {n}")
    rng = np.random.default_rng(seed)
    adj, order = random_dag(d, float(d if expected_edges is None else expected_edges), rng)
    z = sample_anm(adj, n, rng, noise_std=noise_std)
    x = z.copy() if observed_dim is None else leaky_relu_mixing(z, observed_dim, rng, layers=mixing_layers)
    meta = {
        "kind": "latent_anm",
        "n": n,
        "d": d,
        "observed_dim": observed_dim,
        "expected_edges": float(d if expected_edges is None else expected_edges),
        "seed": seed,
        "noise_std": list(noise_std),
        "mixing_layers": mixing_layers,
        "order": order,
        "edges": [[int(i), int(j)] for i, j in zip(*np.nonzero(adj), strict=True)],
        "latent_names": [f"z{j}" for j in range(d)],
    }
    return ANMDataset(x=x.astype(np.float32), z=z.astype(np.float32), adjacency=adj, order=order, meta=meta)


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def save_anm(data: ANMDataset, out: str | Path) -> Path:
    """Write ``x.npy``, ``z.npy``, ``adjacency.csv`` and ``meta.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "x.npy", _npy_bytes(np.asarray(data.x)))
    atomic_write_bytes(out / "z.npy", _npy_bytes(np.asarray(data.z)))
    rows = "\n".join(",".join(str(int(v)) for v in row) for row in data.adjacency)
    atomic_write_bytes(out / "adjacency.csv", (rows + "\n").encode())
    write_json(out / "meta.json", {**data.meta, "order": list(data.order)})
    return out


def _load_array(path: Path) -> np.ndarray:
    """A numeric ``.npy`` array (never a pickled object array); a damaged file is an ``InputError``."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0]})") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{path}: expected a numeric array, got {getattr(array, 'dtype', type(array))}")
    return array


def load_anm(folder: str | Path) -> ANMDataset:
    """Read a folder written by :func:`save_anm` (or by the Pendulum generator)."""
    from trustmed.io import read_json

    folder = Path(folder)
    if not (folder / "x.npy").is_file():
        raise InputError(f"{folder}: no x.npy found; expected a folder written by 'trustmed causal synth-*'")
    x = _load_array(folder / "x.npy")
    z = _load_array(folder / "z.npy") if (folder / "z.npy").is_file() else None
    if z is not None and (z.ndim != 2 or len(z) != len(x)):
        raise InputError(f"{folder}/z.npy: expected one row of latents per row of x.npy, got shape {z.shape}")
    adj = None
    if (folder / "adjacency.csv").is_file():
        try:
            adj = np.loadtxt(folder / "adjacency.csv", delimiter=",", dtype=int, ndmin=2)
        except ValueError as exc:
            raise InputError(
                f"{folder}/adjacency.csv: not a 0/1 matrix ({str(exc).splitlines()[0]})"
            ) from None
        if z is not None and adj.shape != (z.shape[1], z.shape[1]):
            raise InputError(
                f"{folder}/adjacency.csv: shape {adj.shape} does not match z.npy's {z.shape[1]} latents"
            )
    meta = read_json(folder / "meta.json", what="meta.json") if (folder / "meta.json").is_file() else {}
    if not isinstance(meta, dict):
        raise InputError(f"{folder}/meta.json: expected a JSON object")
    return ANMDataset(x=x, z=z, adjacency=adj, order=list(meta.get("order", [])), meta=meta)

"""Bootstrap resampling shared by every metric: seeded resampling weights and percentile intervals.

A bootstrap replicate is represented by multiplicity weights, how often each sample is drawn, so
a metric of a resample is a weighted version of the metric of the data and many replicates are
one matrix product (replicates × samples) instead of a loop. Resampling is **stratified**: every
stratum (a group) is resampled with replacement at its own size, so group sizes are kept and no
group vanishes from a replicate. When cluster ids (patient ids) are given it is also **clustered**:
within a stratum whole clusters are drawn, as many as the stratum has, so all images of a patient
move together (Field & Welsh, "Bootstrapping clustered data", JRSS-B 2007). Intervals are percentile
intervals (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993).

Each stratum draws from its own generator, spawned from ``numpy.random.SeedSequence(seed)``, so the
same seed gives the same replicates whether they are drawn at once or in chunks.

>>> boot = Bootstrap(5, strata=["a", "a", "a", "b", "b"], seed=0)
>>> weights = boot.draw(4)
>>> weights.shape, weights[:, :3].sum(axis=1).tolist(), weights[:, 3:].sum(axis=1).tolist()
((4, 5), [3.0, 3.0, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0])
>>> percentile_ci(np.array([1.0, 2.0, np.nan, 3.0]), (0.0, 1.0))
[1.0, 3.0]
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trustmed.errors import InputError

__all__ = ["Bootstrap", "check_ci", "check_n_boot", "percentile_ci"]

# Bound on the number of weight-matrix entries (replicates × samples) drawn at once.
_CHUNK_ENTRIES = 4_000_000


@dataclass
class _Stratum:
    columns: slice | np.ndarray  # the stratum's samples: a slice when they are contiguous
    units: int  # samples, or clusters, drawn per replicate
    cluster: np.ndarray | None  # cluster index (0..units-1) of each of its samples


class Bootstrap:
    """Seeded bootstrap replicates of ``n`` samples, as multiplicity weights.

    Parameters
    ----------
    n
        Number of samples.
    strata
        Optional stratum (group) of every sample; each is resampled at its own size. ``None``
        resamples all samples together.
    clusters
        Optional cluster (patient) id of every sample; whole clusters are drawn within each stratum.
    seed
        Seed of the resampling.

    Examples
    --------
    >>> boot = Bootstrap(4, clusters=["p", "p", "q", "r"], seed=1)
    >>> w = boot.draw(3)
    >>> bool((w[:, 0] == w[:, 1]).all()), w[:, [0, 2, 3]].sum(axis=1).tolist()
    (True, [3.0, 3.0, 3.0])
    """

    def __init__(self, n: int, *, strata: Any = None, clusters: Any = None, seed: int = 0):
        self.n = int(n)
        codes = np.zeros(self.n, dtype=np.int64) if strata is None else _codes(strata, self.n, "strata")
        cluster_codes = None if clusters is None else _codes(clusters, self.n, "clusters", sort=False)
        self._strata: list[_Stratum] = []
        for k in range(int(codes.max()) + 1 if self.n else 0):
            members = np.flatnonzero(codes == k)
            contiguous = members[-1] - members[0] + 1 == members.size
            columns = slice(int(members[0]), int(members[-1]) + 1) if contiguous else members
            cluster = None if cluster_codes is None else pd.factorize(cluster_codes[members])[0]
            units = members.size if cluster is None else int(cluster.max()) + 1
            self._strata.append(_Stratum(columns, units, cluster))
        seeds = np.random.SeedSequence(seed).spawn(len(self._strata))
        self._rngs = [np.random.default_rng(s) for s in seeds]

    def draw(self, n_replicates: int) -> np.ndarray:
        """The next ``n_replicates`` replicates' weights, shape ``(n_replicates, n)``."""
        b = int(n_replicates)
        weights = np.empty((b, self.n))
        for stratum, rng in zip(self._strata, self._rngs, strict=True):
            units = stratum.units
            draws = rng.integers(0, units, size=(b, units), dtype=np.int32)
            # a bincount per replicate row beats one bincount over all rows: the counts stay in cache
            for row in range(b):
                counts = np.bincount(draws[row], minlength=units)
                weights[row, stratum.columns] = counts if stratum.cluster is None else counts[stratum.cluster]
        return weights

    def chunks(self, n_boot: int) -> Iterator[np.ndarray]:
        """:meth:`draw` ``n_boot`` replicates in chunks of bounded memory; the same replicates as one draw."""
        size = max(1, min(n_boot, _CHUNK_ENTRIES // max(self.n, 1)))
        for start in range(0, n_boot, size):
            yield self.draw(min(size, n_boot - start))


def _codes(values: Any, n: int, what: str, sort: bool = True) -> np.ndarray:
    values = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if values.ndim != 1 or len(values) != n:
        raise InputError(f"{what}: expected one value per sample ({n}), got shape {values.shape}")
    codes = pd.factorize(values, sort=sort)[0]
    if (codes < 0).any():
        raise InputError(f"{what}: missing value at sample {int(np.flatnonzero(codes < 0)[0])}")
    return codes


def check_n_boot(n_boot: Any) -> int:
    """``n_boot`` as an int; an :class:`~trustmed.errors.InputError` unless it is a non-negative integer."""
    if not isinstance(n_boot, numbers.Integral) or isinstance(n_boot, bool) or n_boot < 0:
        raise InputError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    return int(n_boot)


def check_ci(ci: Any) -> tuple[float, float]:
    """The interval's two quantiles; an :class:`~trustmed.errors.InputError` unless ``0 <= lo < hi <= 1``."""
    try:
        lo, hi = (float(q) for q in ci)
    except (TypeError, ValueError):
        raise InputError(f"ci must be two quantiles 0 <= lo < hi <= 1, got {ci!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise InputError(f"ci must be two quantiles 0 <= lo < hi <= 1, got {ci!r}")
    return lo, hi


def percentile_ci(samples: np.ndarray, ci: tuple[float, float]) -> list[float]:
    """Percentile interval ``[lo, hi]`` of the replicates' values, leaving out undefined (NaN) ones.

    ``[nan, nan]`` when no replicate defines the value.
    """
    samples = np.asarray(samples, dtype=np.float64)
    defined = samples[np.isfinite(samples)]
    if defined.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.quantile(defined, ci)
    return [float(lo), float(hi)]

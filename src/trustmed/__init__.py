"""trustmed: trustworthy medical-imaging models.

Fairness audits with bootstrap confidence intervals, post-hoc debiasing (SWiFT) against its
baselines, group-robust distillation (GroupDistil), phrase grounding with a latent diffusion
model's cross-attention, and causal representation learning (coVAE).

The main entry points are importable from here. Each is imported from the package that owns it
on first use, so ``import trustmed`` stays fast and does not load PyTorch.

>>> from trustmed import fairness_report
>>> report = fairness_report([0, 1, 0, 1], [0.2, 0.9, 0.6, 0.7], groups=["a", "a", "b", "b"], n_boot=0)
>>> report["groups"]["a"]["accuracy"]["value"], report["groups"]["b"]["accuracy"]["value"]
(1.0, 0.5)
"""

from __future__ import annotations

import importlib
from typing import Any

from trustmed.errors import InputError

# Public name -> the package that owns it; imported by ``__getattr__`` on first use.
_API: dict[str, str] = {
    "run_audit": "trustmed.audit",
    "fairness_report": "trustmed.metrics.fairness",
    "SWiFT": "trustmed.debias",
    "GroupDistiller": "trustmed.distill",
    "ZeroShotGrounder": "trustmed.grounding",
    "TunedPrompt": "trustmed.grounding",
    "train_prompt": "trustmed.grounding",
    "load_ldm": "trustmed.grounding",
    "CoVAE": "trustmed.causal",
    "fit_covae": "trustmed.causal",
    "score_order": "trustmed.causal",
    "load_dataset": "trustmed.data",
    "train_classifier": "trustmed.train.classifier",
    "load_checkpoint": "trustmed.models",
}

__all__ = ["InputError", "__version__", *_API]


def _version() -> str:
    """The installed distribution's version, or the source tree's ``pyproject.toml`` one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trustmed")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]


__version__ = _version()


def __getattr__(name: str) -> Any:
    """Import a public name from the package that owns it, once (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'trustmed' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, including those not imported yet."""
    return sorted(__all__)

"""Small shared helpers: seeding and device-independent determinism."""

from __future__ import annotations

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a CPU run repeats exactly."""
    from accelerate.utils import set_seed

    set_seed(int(seed), deterministic=False)

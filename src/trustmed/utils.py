"""Small shared helpers: seeding, and importing what a registry names as ``"module:name"``."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_object", "seed_everything"]


def import_object(target: str) -> Any:
    """The object a registry entry names as ``"package.module:name"``, imported when first needed.

    >>> import_object("trustmed.errors:InputError").__name__
    'InputError'
    """
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a CPU run repeats exactly."""
    from accelerate.utils import set_seed

    set_seed(int(seed), deterministic=False)

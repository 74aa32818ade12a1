"""Classifier backbones (MONAI networks and a tiny CPU preset) and checkpoint IO (safetensors + JSON)."""

from trustmed.models.classifier import (
    ARCHITECTURES,
    Classifier,
    ModelSpec,
    build_model,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "ARCHITECTURES",
    "Classifier",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "load_checkpoint",
    "save_checkpoint",
]

"""The model registry and the built-in ``shapes`` model."""

from cnnviz.models.registry import BUILTIN_MODEL, LoadedModel, ModelRegistry, ModelSpec

__all__ = ["BUILTIN_MODEL", "LoadedModel", "ModelRegistry", "ModelSpec"]

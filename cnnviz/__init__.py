"""cnnviz: what convolutional networks see.

The torch core of the cnnviz service, usable as a plain library::

    from cnnviz import ModelRegistry, decode_image, feature_maps

    loaded = ModelRegistry.from_file(None).get("shapes")
    spec = loaded.spec
    image = decode_image(png_bytes, max_pixels=40_000_000)
    x = spec.preprocess(image)
    [maps] = feature_maps(loaded.module, x, ["block2.relu"])
    maps.png()  # the grid, PNG bytes

Submodules: :mod:`cnnviz.layers`, :mod:`cnnviz.imaging`, :mod:`cnnviz.optvis`,
:mod:`cnnviz.models`, :mod:`cnnviz.data`.
"""

from cnnviz.axes import unit_maps
from cnnviz.errors import (
    AmbiguousAxesError,
    CnnvizError,
    ImageTooLargeError,
    InvalidArgumentError,
    InvalidImageError,
    LayerShapeError,
    ModelLoadError,
    RegistryConfigError,
    UnknownLayerError,
    UnknownModelError,
)
from cnnviz.featuremaps import GridOptions, LayerMaps, feature_map_grid, feature_maps
from cnnviz.imaging import decode_image, encode_png, preprocess
from cnnviz.layers import LayerIndex, LayerInfo, capture_activations, layer_index
from cnnviz.models import LoadedModel, ModelRegistry, ModelSpec
from cnnviz.optvis import RenderResult, RenderSettings, objectives, visualize

__all__ = [
    "AmbiguousAxesError",
    "CnnvizError",
    "GridOptions",
    "ImageTooLargeError",
    "InvalidArgumentError",
    "InvalidImageError",
    "LayerIndex",
    "LayerInfo",
    "LayerMaps",
    "LayerShapeError",
    "LoadedModel",
    "ModelLoadError",
    "ModelRegistry",
    "ModelSpec",
    "RegistryConfigError",
    "RenderResult",
    "RenderSettings",
    "UnknownLayerError",
    "UnknownModelError",
    "capture_activations",
    "decode_image",
    "encode_png",
    "feature_map_grid",
    "feature_maps",
    "layer_index",
    "objectives",
    "preprocess",
    "unit_maps",
    "visualize",
]

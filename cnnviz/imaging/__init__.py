"""Images in and out: decoding, preprocessing, colormaps, grids and PNG encoding."""

from cnnviz.imaging.decode import ALLOWED_FORMATS, decode_image
from cnnviz.imaging.grid import (
    GridLayout,
    grid_layout,
    image_grid,
    tile_grid,
    to_pixels,
    upscale,
)
from cnnviz.imaging.heatmap import (
    DEFAULT_COLORMAP,
    PAD_INDEX,
    apply_palette,
    colormap_lut,
    colormap_names,
    palette,
    quantize,
    value_range,
)
from cnnviz.imaging.png import DEFAULT_COMPRESS_LEVEL, encode_png
from cnnviz.imaging.preprocess import denormalize, normalize, preprocess, to_tensor

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_COLORMAP",
    "DEFAULT_COMPRESS_LEVEL",
    "PAD_INDEX",
    "GridLayout",
    "apply_palette",
    "colormap_lut",
    "colormap_names",
    "decode_image",
    "denormalize",
    "encode_png",
    "grid_layout",
    "image_grid",
    "normalize",
    "palette",
    "preprocess",
    "quantize",
    "tile_grid",
    "to_pixels",
    "to_tensor",
    "upscale",
    "value_range",
]

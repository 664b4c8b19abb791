"""The curated public surface of the core, pinned: changing it is a decision, not an accident."""

from __future__ import annotations

import cnnviz
import cnnviz.optvis

EXPECTED = {
    "AmbiguousAxesError",
    "CnnvizError",
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
    "GridOptions",
    "feature_map_grid",
    "feature_maps",
    "layer_index",
    "objectives",
    "preprocess",
    "unit_maps",
    "visualize",
}


def test_the_public_names_are_exactly_these() -> None:
    assert set(cnnviz.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(cnnviz, name) is not None


def test_every_error_is_a_cnnviz_error_and_a_standard_one() -> None:
    errors = [getattr(cnnviz, n) for n in EXPECTED if n.endswith("Error") and n != "CnnvizError"]
    for error in errors:
        assert issubclass(error, cnnviz.CnnvizError)
        assert issubclass(error, LookupError | ValueError | RuntimeError)


def test_optvis_exposes_the_render_contract() -> None:
    assert set(cnnviz.optvis.__all__) >= {
        "RenderResult",
        "RenderSettings",
        "StepReport",
        "check_objective",
        "objectives",
        "visualize",
    }

"""Attribution: which pixels made the prediction (Grad-CAM, saliency, integrated gradients,
guided Grad-CAM, occlusion), on captum.

Each method is one module that registers itself (:mod:`cnnviz.attribution.base`);
:func:`attribute` runs one for an image and its targets and :func:`map_picture` draws a map.
"""

# Importing a method's module registers it.
from cnnviz.attribution import (
    gradcam,
    guided_gradcam,
    integrated_gradients,
    occlusion,
    saliency,
)
from cnnviz.attribution.base import (
    AttributionMethod,
    AttributionTask,
    MethodResult,
    get_method,
    method_names,
    register,
)
from cnnviz.attribution.core import (
    MAX_STEPS,
    MAX_TARGETS,
    Attribution,
    Prediction,
    attribute,
    default_window,
    planned_passes,
)
from cnnviz.attribution.faithfulness import (
    METRICS,
    Faithfulness,
    faithfulness,
    metric_images,
)
from cnnviz.attribution.picture import MapPicture, MapStats, map_picture, map_stats, overlay_full
from cnnviz.attribution.replica import exclusive_copy

__all__ = [
    "MAX_STEPS",
    "MAX_TARGETS",
    "METRICS",
    "Attribution",
    "AttributionMethod",
    "AttributionTask",
    "Faithfulness",
    "MapPicture",
    "MapStats",
    "MethodResult",
    "Prediction",
    "attribute",
    "default_window",
    "exclusive_copy",
    "faithfulness",
    "get_method",
    "map_picture",
    "map_stats",
    "method_names",
    "metric_images",
    "overlay_full",
    "planned_passes",
    "register",
]

del gradcam, guided_gradcam, integrated_gradients, occlusion, saliency

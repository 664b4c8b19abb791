"""Attribution: which pixels made the prediction (Grad-CAM and the CAM family, saliency,
integrated gradients, guided Grad-CAM, occlusion), on captum, with a noise tunnel for the
gradient methods and faithfulness scores for every map.

Each method is one module that registers itself (:mod:`cnnviz.attribution.base`);
:func:`attribute` runs one for an image and its targets and :func:`map_picture` draws a map.
"""

# Importing a method's module registers it.
from cnnviz.attribution import (
    cams,
    gradcam,
    guided_gradcam,
    integrated_gradients,
    occlusion,
    saliency,
)
from cnnviz.attribution.base import (
    SMOOTH_TYPES,
    AttributionMethod,
    AttributionTask,
    Cost,
    CostInputs,
    MethodResult,
    Smooth,
    get_method,
    method_names,
    methods,
    register,
)
from cnnviz.attribution.core import (
    MAX_NOISE_SAMPLES,
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
from cnnviz.attribution.sanity import (
    PASS_BELOW,
    SanityResult,
    cascading_randomization,
    randomizable,
)

__all__ = [
    "MAX_NOISE_SAMPLES",
    "MAX_STEPS",
    "MAX_TARGETS",
    "METRICS",
    "PASS_BELOW",
    "SMOOTH_TYPES",
    "Attribution",
    "AttributionMethod",
    "AttributionTask",
    "Cost",
    "CostInputs",
    "Faithfulness",
    "MapPicture",
    "MapStats",
    "MethodResult",
    "Prediction",
    "SanityResult",
    "Smooth",
    "attribute",
    "cascading_randomization",
    "default_window",
    "exclusive_copy",
    "faithfulness",
    "get_method",
    "map_picture",
    "map_stats",
    "method_names",
    "methods",
    "metric_images",
    "overlay_full",
    "planned_passes",
    "randomizable",
    "register",
]

del cams, gradcam, guided_gradcam, integrated_gradients, occlusion, saliency

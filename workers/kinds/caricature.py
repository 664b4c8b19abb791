"""A caricature's image: kept in the records by its sha256 when the job is submitted, so that
the task names it in 64 characters; read back where the job runs; and turned into the
activations that the objective climbs towards."""

from __future__ import annotations

import base64
import hashlib

import torch
from PIL import Image

from cnnviz.axes import unit_maps
from cnnviz.data.shapes import sample_image
from cnnviz.errors import InvalidArgumentError
from cnnviz.imaging.decode import decode_base64, decode_image
from cnnviz.models import LoadedModel
from cnnviz.optvis import objectives
from cnnviz.optvis.objectives import Objective
from schemas.objectives import CaricatureSpec
from schemas.optimization import OptimizationCreate
from workers.kinds.base import MAX_IMAGE_PIXELS, Resources

__all__ = ["caricature_objective", "fetched", "kept"]


def _with(request: OptimizationCreate, **changes: object) -> OptimizationCreate:
    assert request.caricature is not None
    return request.model_copy(update={"caricature": request.caricature.model_copy(update=changes)})


def kept(request: OptimizationCreate, resources: Resources) -> OptimizationCreate:
    """``request`` with its caricature's uploaded image kept in ``resources.blobs`` and named
    by its sha256; as it is without an uploaded image or a store. The image is checked first,
    as an uploaded image is: an allowed format, at most ``resources.max_image_pixels``."""
    spec = request.caricature
    if spec is None or spec.image is None or resources.blobs is None:
        return request
    data = decode_base64(spec.image)
    decode_image(data, max_pixels=resources.max_image_pixels)
    digest = hashlib.sha256(data).hexdigest()
    resources.blobs.put_blob(digest, data, resources.blob_ttl_seconds)
    return _with(request, image=None, image_sha256=digest)


def fetched(request: OptimizationCreate, resources: Resources) -> OptimizationCreate:
    """``request`` with the image its caricature names by sha256 back in it (base64)."""
    spec = request.caricature
    if spec is None or spec.image_sha256 is None:
        return request
    data = resources.blobs.blob(spec.image_sha256) if resources.blobs is not None else None
    if data is None:
        raise InvalidArgumentError(
            f"no image is kept under sha256 {spec.image_sha256} (kept for a job's life); "
            "send the image itself in caricature.image"
        )
    return _with(request, image=base64.b64encode(data).decode(), image_sha256=None)


def _image(spec: CaricatureSpec) -> Image.Image:
    if spec.sample is not None:
        return sample_image(spec.sample)
    if spec.image is None:
        raise InvalidArgumentError("the caricature's image was not read back from its sha256")
    return decode_image(decode_base64(spec.image), max_pixels=MAX_IMAGE_PIXELS)


def caricature_objective(request: OptimizationCreate, loaded: LoadedModel) -> Objective:
    """The caricature of ``request`` on ``loaded``: one forward pass of its image, prepared
    as the model's inputs are, to the layer's unit-first activations ``(units, h, w)``."""
    spec = request.caricature
    assert spec is not None  # the schema enforces it
    layer = spec.layer or request.layer
    x = loaded.spec.preprocess(_image(spec)).to(loaded.device)
    with torch.no_grad():  # a constant of the objective (inference tensors refuse autograd)
        out = loaded.index.capture(x, [layer])[layer]
    maps = unit_maps(out, loaded.index.usable([layer])[0])[0].float()
    return objectives.caricature(layer, maps, spec.cossim_pow)

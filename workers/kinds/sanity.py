"""The sanity-check kind: cascading randomization of attribution methods (Adebayo et al.
2018), one shard: every stage re-runs each method on every image."""

from __future__ import annotations

import torch

from cnnviz.attribution import PASS_BELOW, cascading_randomization, get_method, randomizable
from cnnviz.errors import InvalidArgumentError
from cnnviz.imaging import preprocess
from cnnviz.imaging.decode import decode_base64, decode_image
from schemas.jobs import Progress
from schemas.sanity import (
    JOB_ROUTE,
    SanityCheckCreate,
    SanityCheckResult,
    SanityMethodRead,
    SanityStageRead,
)
from workers.kinds.base import JobContext, OneShardJobKind, Resources
from workers.kinds.registry import register_kind
from workers.records.verdicts import (
    SanityStatus,
    Verdict,
    Verdicts,
    VerdictTable,
    sanity_status,
)

__all__ = ["SanityChecks", "answer_status", "verdict_layer"]

_MAX_IMAGE_PIXELS = 40_000_000


def verdict_layer(method: str, layer: str | None) -> str:
    """The layer a verdict is kept under: ``layer`` for a method that reads one, else ``""``
    (a check of saliency says the same whatever layer the request named)."""
    return (layer or "") if get_method(method).needs_layer else ""


def answer_status(table: VerdictTable, method: str, layer: str | None) -> SanityStatus:
    """The sanity status an attribution answer of ``method`` at ``layer`` carries."""
    return sanity_status(table, method, verdict_layer(method, layer))


def _images(request: SanityCheckCreate, model: str, resources: Resources) -> torch.Tensor:
    """The request's images as the model's inputs ``(N, C, H, W)``."""
    spec = resources.model(model).spec
    if request.dataset is not None:
        dataset = resources.datasets.get(request.dataset)
        pictures = [dataset.image(i) for i in range(min(request.max_images, len(dataset)))]
    else:
        pictures = [
            decode_image(decode_base64(data), max_pixels=_MAX_IMAGE_PIXELS)
            for data in request.images or []
        ]
    inputs = [
        preprocess(
            picture,
            size=spec.input_size,
            channels=spec.channels,
            mean=spec.mean,
            std=spec.std,
        )
        for picture in pictures
    ]
    return torch.cat(inputs)


@register_kind
class SanityChecks(OneShardJobKind[SanityCheckCreate, SanityCheckResult]):
    """Sanity checks as a job; progress in stages (modules re-initialised)."""

    route = JOB_ROUTE
    progress_unit = "stages"

    def prepare(
        self, request: SanityCheckCreate, model: str, resources: Resources
    ) -> SanityCheckCreate:
        loaded = resources.model(model)
        chosen = [get_method(name) for name in request.methods]  # unknown: a 422
        if len(set(request.methods)) != len(request.methods):
            raise InvalidArgumentError(f"methods repeat a name: {request.methods}")
        needing = [m.name for m in chosen if m.needs_layer]
        if needing and request.layer is None:
            raise InvalidArgumentError(f"methods {', '.join(needing)} need a layer")
        if request.layer is not None:
            loaded.index.info(request.layer)  # UnknownLayerError for a name the model lacks
        if request.dataset is not None:
            resources.datasets.get(request.dataset)  # UnknownDatasetError
        else:
            _images(request, model, resources)  # a bad image is refused before queueing
        return request

    def work(self, request: SanityCheckCreate, model: str, resources: Resources) -> int:
        return len(randomizable(resources.model(model).module))

    def run(
        self, request: SanityCheckCreate, model: str, resources: Resources, context: JobContext
    ) -> SanityCheckResult:
        loaded = resources.model(model)
        images = _images(request, model, resources).to(loaded.device)

        def on_stage(done: int, total: int) -> None:
            context.check()
            if context.progress_due(done == total):
                context.report(Progress(step=done, total=total, unit=self.progress_unit))

        context.check()
        results = cascading_randomization(
            loaded.module,
            images,
            request.methods,
            layer=request.layer,
            seed=request.seed,
            model_name=model,
            on_stage=on_stage,
        )
        return SanityCheckResult(
            model=model,
            layer=request.layer,
            images=int(images.shape[0]),
            threshold=PASS_BELOW,
            methods=[
                SanityMethodRead(
                    method=result.method,
                    passes=result.passes,
                    correlations=[
                        SanityStageRead(layer=name, spearman=value)
                        for name, value in result.correlations
                    ],
                )
                for result in results
            ],
        )

    def finalize(
        self,
        result: SanityCheckResult,
        request: SanityCheckCreate,
        model: str,
        weights: str | None,
        kept: Verdicts,
    ) -> SanityCheckResult:
        """Keep each method's verdict under the weights checked (the layer only for a method
        that reads one), for the attribution answers; weights without a digest: nothing."""
        if weights is not None:
            verdicts = [
                Verdict(m.method, verdict_layer(m.method, request.layer), m.passes)
                for m in result.methods
            ]
            kept.keep_verdicts(model, weights, verdicts)
        return result

"""The client: one typed method per route (:mod:`cnnviz_client.routes`), answers parsed into
:mod:`schemas`, the contract the service itself speaks."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx

from cnnviz_client import waiting
from cnnviz_client.analysis import Analysis
from cnnviz_client.errors import ApiError, JobFailed, raise_for_problem
from cnnviz_client.kinds import AttributionJob, ExemplarsJob, OptimizationJob, parse_job
from cnnviz_client.routes import ROUTES, path
from cnnviz_client.transport import DEFAULT_URL, PNG, Image, _image_request, _json_body
from schemas.attributions import AttributionJobCreate, AttributionsCreate, AttributionsRead
from schemas.datasets import DatasetsRead
from schemas.exemplars import ExemplarGridQuery, ExemplarGridRead, ExemplarsCreate
from schemas.feature_maps import FeatureMapsCreate, FeatureMapsRead
from schemas.health import Health, Readiness
from schemas.jobs import JobList, JobRead
from schemas.models import LayerList, ModelList, ModelRead
from schemas.optimization import OptimizationCreate, OptimizationResult
from schemas.samples import SampleList
from schemas.weights import WeightsQuery, WeightsRead

__all__ = ["DEFAULT_URL", "ApiError", "Client", "JobFailed"]


def _feature_maps(
    layers: Sequence[str], image: Image | None, sample: str | None, options: dict[str, Any]
) -> FeatureMapsCreate:
    return _image_request(FeatureMapsCreate, image, sample, {"layers": list(layers), **options})


class Client(Analysis):
    """A cnnviz service at ``base_url``; ``api_key`` when the service has keys.

    ``http``: an httpx client of your own (its base URL, headers and transport are used as
    they are, and it is not closed with this one).
    """

    # ---- health --------------------------------------------------------------------------

    def health(self) -> Health:
        return Health.model_validate_json(self._send("health", {}).content)

    def ready(self) -> Readiness:
        """Ready or not (a service that is not ready answers 503 with its checks)."""
        response = self._http.request("GET", path("ready"))
        if response.status_code != 503:
            raise_for_problem(response)
        return Readiness.model_validate_json(response.content)

    # ---- models and what they see --------------------------------------------------------

    def models(self) -> ModelList:
        return ModelList.model_validate_json(self._send("models", {}).content)

    def model(self, name: str) -> ModelRead:
        """One model: its source, input, labels and weights' digest."""
        return ModelRead.model_validate_json(self._send("model", {"model": name}).content)

    def layers(self, model: str) -> LayerList:
        return LayerList.model_validate_json(self._send("layers", {"model": model}).content)

    def register_model(
        self, name: str, spec: dict[str, Any], weights: bytes | str | Path
    ) -> ModelRead:
        """Register (or replace) a model: ``spec`` has the keys of a ``[models.NAME]`` table
        with ``arch`` or ``timm``; ``weights`` a safetensors file. Needs an admin key."""
        data = weights if isinstance(weights, bytes) else Path(weights).read_bytes()
        response = self._send(
            "register_model",
            {"model": name},
            data={"spec": json.dumps(spec)},
            files={"weights": ("weights.safetensors", data, "application/octet-stream")},
        )
        return ModelRead.model_validate_json(response.content)

    def delete_model(self, name: str) -> None:
        """Remove a registered model. Needs an admin key."""
        self._send("delete_model", {"model": name})

    def feature_maps(
        self,
        model: str,
        layers: Sequence[str],
        image: Image | None = None,
        sample: str | None = None,
        **options: Any,
    ) -> FeatureMapsRead:
        """Grids of ``layers`` for an image (bytes or a file path) or a built-in ``sample``.

        ``options``: ``channels``, ``top_k``, ``normalize``, ``colormap``, ``columns``,
        ``padding``, ``scale``, ``fit``, ``precision`` (:class:`FeatureMapsCreate`).
        """
        body = _json_body(_feature_maps(layers, image, sample, options))
        response = self._send("feature_maps", {"model": model}, **body)
        return FeatureMapsRead.model_validate_json(response.content)

    def feature_maps_png(
        self,
        model: str,
        layer: str,
        image: Image | None = None,
        sample: str | None = None,
        **options: Any,
    ) -> bytes:
        """The grid PNG of one layer (its layout in the answer's ``X-Grid-*`` headers)."""
        body = _json_body(_feature_maps([layer], image, sample, options))
        body["headers"].update(PNG)
        return self._send("feature_maps", {"model": model}, **body).content

    def feature_maps_raw(
        self,
        model: str,
        layers: Sequence[str],
        image: Image | None = None,
        sample: str | None = None,
        format: Literal["npy", "safetensors"] = "safetensors",
        channels: Sequence[int] | None = None,
    ) -> bytes:
        """The activations themselves, float32: ``.npy`` (one layer) or safetensors (by
        layer name)."""
        chosen = list(channels) if channels is not None else None
        request = _feature_maps(layers, image, sample, {"channels": chosen})
        response = self._send(
            "feature_maps", {"model": model}, params={"format": format}, **_json_body(request)
        )
        return response.content

    def weights(
        self, model: str, layer: str, query: WeightsQuery | None = None, **options: Any
    ) -> WeightsRead:
        """The kernels of a convolution as a grid, with their numbers (:class:`WeightsQuery`:
        ``mode``, ``k``, ``filters``, ``top_k``, ``normalize``, ``colormap``, ...)."""
        params = self._weights_params(query, options)
        response = self._send("weights", {"model": model, "layer": layer}, params=params)
        return WeightsRead.model_validate_json(response.content)

    def weights_png(
        self, model: str, layer: str, query: WeightsQuery | None = None, **options: Any
    ) -> bytes:
        """The kernels' grid as a PNG."""
        params = self._weights_params(query, options)
        return self._send(
            "weights", {"model": model, "layer": layer}, params=params, headers=PNG
        ).content

    @staticmethod
    def _weights_params(query: WeightsQuery | None, options: dict[str, Any]) -> dict[str, Any]:
        chosen = query or WeightsQuery.model_validate(options)
        return chosen.model_dump(mode="json", exclude_unset=True)

    def attribute(
        self,
        model: str,
        image: Image | None = None,
        sample: str | None = None,
        request: AttributionsCreate | None = None,
        **fields: Any,
    ) -> AttributionsRead:
        """Attribution maps of one image (``method``, ``target``, ``layer``, ...:
        :class:`AttributionsCreate`), with the top predictions and each map's numbers."""
        body = _json_body(request or _image_request(AttributionsCreate, image, sample, fields))
        response = self._send("attribute", {"model": model}, **body)
        return AttributionsRead.model_validate_json(response.content)

    def attribute_png(
        self,
        model: str,
        image: Image | None = None,
        sample: str | None = None,
        request: AttributionsCreate | None = None,
        **fields: Any,
    ) -> bytes:
        """One target's picture as a PNG (``picture``: ``overlay`` or ``map``)."""
        body = _json_body(request or _image_request(AttributionsCreate, image, sample, fields))
        body["headers"].update(PNG)
        return self._send("attribute", {"model": model}, **body).content

    # ---- images to feed them -------------------------------------------------------------

    def samples(self) -> SampleList:
        return SampleList.model_validate_json(self._send("samples", {}).content)

    def sample(self, name: str) -> bytes:
        """A built-in sample image, as PNG."""
        return self._send("sample", {"name": name}).content

    def datasets(self) -> DatasetsRead:
        return DatasetsRead.model_validate_json(self._send("datasets", {}).content)

    def dataset_image(self, dataset: str, image_id: str) -> bytes:
        """One image of a data set, as stored (PNG for the generated set)."""
        return self._send("dataset_image", {"dataset": dataset, "image_id": image_id}).content

    # ---- jobs: submit --------------------------------------------------------------------

    def optimize(
        self,
        model: str,
        request: OptimizationCreate | None = None,
        idempotency_key: str | None = None,
        reuse: bool = True,
        **fields: Any,
    ) -> OptimizationJob:
        """Queue an optimization (a request, or its fields: ``layer``, ``channels``, ...).

        ``reuse=False`` runs it again where an identical request has succeeded before."""
        return self.submit("optimization", model, request, idempotency_key, reuse, **fields)

    def exemplars(
        self,
        model: str,
        request: ExemplarsCreate | None = None,
        idempotency_key: str | None = None,
        reuse: bool = True,
        **fields: Any,
    ) -> ExemplarsJob:
        """Queue an exemplar-mining job (``dataset``, ``layers``, ``k``, ``pool``, ``bottom``)."""
        return self.submit("exemplar", model, request, idempotency_key, reuse, **fields)

    def attribute_job(
        self,
        model: str,
        image: Image | None = None,
        sample: str | None = None,
        request: AttributionJobCreate | None = None,
        idempotency_key: str | None = None,
        reuse: bool = True,
        **fields: Any,
    ) -> AttributionJob:
        """Queue an attribution too long to answer at once (the fields of :meth:`attribute`)."""
        body = request or _image_request(AttributionJobCreate, image, sample, fields)
        return self.submit("attribution", model, body, idempotency_key, reuse)

    # ---- jobs of every kind --------------------------------------------------------------

    def jobs(
        self,
        kind: str | None = None,
        model: str | None = None,
        status: str | None = None,
        page_size: int = 20,
        page_token: str | None = None,
    ) -> JobList:
        """A page of your jobs, newest first, without their results; pass the answer's
        ``next_page_token`` for the next page."""
        given = {"kind": kind, "model": model, "status": status, "page_token": page_token}
        params = {k: v for k, v in given.items() if v is not None} | {"page_size": page_size}
        return JobList.model_validate_json(self._send("jobs", {}, params=params).content)

    def job(self, job_id: str, inline: bool | None = None) -> JobRead[Any, Any]:
        """A job, typed by its kind (:mod:`cnnviz_client.kinds`). ``inline``: the result's
        pictures as base64 (true) or URLs only (false); default: inline when small."""
        params = {} if inline is None else {"inline": str(inline).lower()}
        return parse_job(self._send("job", {"job_id": job_id}, params=params).content)

    def cancel(self, job_id: str) -> JobRead[Any, Any]:
        """Stop a job: a queued one never starts, a running one stops within a few steps."""
        return parse_job(self._send("cancel", {"job_id": job_id}).content)

    def delete(self, job_id: str) -> None:
        """Forget a finished job and its images."""
        self._send("delete", {"job_id": job_id})

    def events(self, job_id: str, read_timeout: float | None = None) -> Iterator[waiting.JobEvent]:
        """The job's event stream, as it comes (``read_timeout``: at most this long between
        two lines, less than the client's timeout). ``ApiError`` if it cannot be had."""
        base = self._http.timeout
        read_s = base.read
        if read_timeout is not None:
            read_s = read_timeout if read_s is None else min(read_s, read_timeout)
        timeout = httpx.Timeout(connect=base.connect, read=read_s, write=base.write, pool=base.pool)
        route = ROUTES["events"]
        with self._http.stream(route.method, path("events", job_id=job_id), timeout=timeout) as r:
            if not r.is_success:
                r.read()
                raise_for_problem(r)
            for name, data in waiting.server_sent_events(r.iter_lines()):
                job = parse_job(data) if name in ("progress", "end") else None
                yield waiting.JobEvent(name, data, job)

    def wait(
        self,
        job_id: str,
        progress: bool | waiting.Show = False,
        timeout: float | None = None,
        poll_s: float = 0.5,
        stream: bool = True,
        until: waiting.Until = waiting.succeeded,
    ) -> JobRead[Any, Any]:
        """Wait for a job to succeed (or for ``until``); see :func:`cnnviz_client.waiting.wait`.

        ``JobFailed`` if it ends otherwise, ``TimeoutError`` after ``timeout`` seconds."""
        return waiting.wait(
            self,
            job_id,
            until=until,
            progress=progress,
            timeout=timeout,
            poll_s=poll_s,
            stream=stream,
        )

    def preview_png(self, job_id: str) -> bytes:
        """The latest image grid of a running job (a succeeded job's: its result grid)."""
        return self._send("preview_png", {"job_id": job_id}).content

    def result_png(self, job: str | JobRead[Any, Any]) -> bytes:
        """The grid PNG of a succeeded job: inline when the job read carries it, else fetched."""
        if not isinstance(job, str):
            if job.result is None:
                raise JobFailed(job)
            if isinstance(job.result, OptimizationResult) and job.result.grid is not None:
                return base64.b64decode(job.result.grid)
            job = job.id
        return self._send("result_png", {"job_id": job}).content

    def unit_png(self, job_id: str, index: int) -> bytes:
        """Picture ``index`` of a succeeded job (``result.units[index]``), as PNG."""
        return self._send("unit_png", {"job_id": job_id, "index": index}).content

    def result_npy(self, job_id: str) -> bytes:
        """A succeeded job's raw tensor as .npy (an optimization's: ``(N, C, S, S)`` float32)."""
        return self._send("result_npy", {"job_id": job_id}).content

    def result_safetensors(self, job_id: str) -> bytes:
        """A succeeded job's raw tensors as safetensors."""
        return self._send("result_safetensors", {"job_id": job_id}).content

    def exemplar_grid(
        self,
        job_id: str,
        layer: str,
        channel: int,
        mode: Literal["full", "crop", "mask"] = "full",
        which: Literal["top", "bottom"] = "top",
    ) -> ExemplarGridRead:
        """A channel's top (or bottom) images of a succeeded exemplars job, as one grid
        (``png``, base64) with the image ids and scores in tile order."""
        query = ExemplarGridQuery(mode=mode, which=which).model_dump()
        where = {"job_id": job_id, "layer": layer, "channel": channel}
        return ExemplarGridRead.model_validate_json(
            self._send("exemplar_grid", where, params=query).content
        )

    def save_result(self, job: JobRead[Any, Any], path: str | Path) -> Path:
        """Write a succeeded job's grid PNG to ``path``."""
        out = Path(path)
        out.write_bytes(self.result_png(job))
        return out

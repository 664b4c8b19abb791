"""The client: one method per use of the API, answers parsed into :mod:`schemas`."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

from schemas.attributions import AttributionMethodList, AttributionsRead
from schemas.dissection import DissectionCreate, DissectionResult
from schemas.feature_maps import FeatureMapsRead
from schemas.jobs import JobRead, JobStatus
from schemas.models import LayerList, ModelList, ModelRead
from schemas.optimization import OptimizationCreate, OptimizationResult

DEFAULT_URL = "http://127.0.0.1:8000"

OptimizationJob = JobRead[OptimizationCreate, OptimizationResult]
DissectionJob = JobRead[DissectionCreate, DissectionResult]
# The typed view of each kind of job; a kind not listed is read with plain dicts.
_JOB_TYPES: dict[str, type[JobRead[Any, Any]]] = {
    "optimization": OptimizationJob,
    "dissection": DissectionJob,
}
_AnyJob = JobRead[dict[str, Any], dict[str, Any]]


def _job(content: bytes) -> JobRead[Any, Any]:
    kind = json.loads(content).get("kind", "")
    return _JOB_TYPES.get(kind, _AnyJob).model_validate_json(content)


class ApiError(Exception):
    """The service answered with an error (problem+json): its status, code and detail."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(f"{status} {code}: {detail}")


class JobFailed(Exception):
    """A waited-for job ended without a result (failed or cancelled)."""

    def __init__(self, job: JobRead[Any, Any]) -> None:
        self.job = job
        error = f": {job.error.code}: {job.error.message}" if job.error else ""
        super().__init__(f"job {job.id} {job.status.value}{error}")


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        code, detail = str(body.get("code", "error")), str(body.get("detail", response.text))
    except ValueError:
        code, detail = "error", response.text.strip() or response.reason_phrase
    raise ApiError(response.status_code, code, detail)


def _check_deadline(job_id: str, deadline: float | None, state: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"job {job_id} is still {state}")


def server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` of each event of a ``text/event-stream``; ``("", "")`` for each
    comment (a heartbeat), so that the reader gets a turn on a quiet stream."""
    name = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data or name:
                yield name or "message", "\n".join(data)
            name, data = "", []
        elif line.startswith(":"):
            yield "", ""
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)


class Client:
    """A cnnviz service at ``base_url``; ``api_key`` when the service has keys."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        # Idle connections are dropped well before uvicorn closes them (after 5 s, httpx's
        # own default too), so a request is not sent on a connection the server is closing.
        limits = httpx.Limits(keepalive_expiry=2.0)
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=transport,
            limits=limits,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        _raise_for_problem(response)
        return response

    # ---- models --------------------------------------------------------------------------

    def models(self) -> ModelList:
        return ModelList.model_validate_json(self._request("GET", "/v1/models").content)

    def layers(self, model: str) -> LayerList:
        response = self._request("GET", f"/v1/models/{model}/layers")
        return LayerList.model_validate_json(response.content)

    def register_model(
        self, name: str, spec: dict[str, Any], weights: bytes | str | Path
    ) -> ModelRead:
        """Register (or replace) a model: ``spec`` has the keys of a ``[models.NAME]`` table
        with ``arch`` or ``timm``; ``weights`` a safetensors file. Needs an admin key."""
        data = weights if isinstance(weights, bytes) else Path(weights).read_bytes()
        response = self._request(
            "PUT",
            f"/v1/models/{name}",
            data={"spec": json.dumps(spec)},
            files={"weights": ("weights.safetensors", data, "application/octet-stream")},
        )
        return ModelRead.model_validate_json(response.content)

    def delete_model(self, name: str) -> None:
        """Remove a registered model. Needs an admin key."""
        self._request("DELETE", f"/v1/models/{name}")

    # ---- feature maps --------------------------------------------------------------------

    def feature_maps(
        self,
        model: str,
        layers: Sequence[str],
        image: bytes | str | Path | None = None,
        sample: str | None = None,
        **options: Any,
    ) -> FeatureMapsRead:
        """Grids of ``layers`` for an image (bytes or a file path) or a built-in ``sample``.

        ``options``: ``channels``, ``top_k``, ``normalize``, ``colormap``, ``columns``,
        ``padding``, ``scale``, ``fit`` (see the API docs).
        """
        body: dict[str, Any] = {"layers": list(layers), **options}
        if image is not None:
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            body["image"] = base64.b64encode(data).decode("ascii")
        if sample is not None:
            body["sample"] = sample
        response = self._request("POST", f"/v1/models/{model}/feature-maps", json=body)
        return FeatureMapsRead.model_validate_json(response.content)

    # ---- attributions --------------------------------------------------------------------

    def attribution_methods(self, model: str | None = None) -> AttributionMethodList:
        """The service's attribution methods, their options and costs (for ``model``)."""
        params = {"model": model} if model is not None else {}
        response = self._request("GET", "/v1/attribution-methods", params=params)
        return AttributionMethodList.model_validate_json(response.content)

    def _attribution_body(
        self, method: str, image: bytes | str | Path | None, sample: str | None, options: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"method": method, **options}
        if image is not None:
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            body["image"] = base64.b64encode(data).decode("ascii")
        if sample is not None:
            body["sample"] = sample
        return body

    def attributions(
        self,
        model: str,
        method: str,
        image: bytes | str | Path | None = None,
        sample: str | None = None,
        **options: Any,
    ) -> AttributionsRead:
        """Attribution maps of an image (bytes or a path) or a built-in ``sample``.

        ``method`` is one of :meth:`attribution_methods`; ``options``: ``layer``, ``target``,
        ``metrics``, ``smooth``, ``steps``, ... (see the API docs).
        """
        body = self._attribution_body(method, image, sample, options)
        response = self._request("POST", f"/v1/models/{model}/attributions", json=body)
        return AttributionsRead.model_validate_json(response.content)

    def attribution_maps(
        self,
        model: str,
        method: str,
        image: bytes | str | Path | None = None,
        sample: str | None = None,
        **options: Any,
    ) -> bytes:
        """The raw maps as a float32 ``.npy`` file, ``(targets, H, W)`` (``numpy.load``)."""
        body = self._attribution_body(method, image, sample, options)
        response = self._request(
            "POST", f"/v1/models/{model}/attributions", params={"format": "npy"}, json=body
        )
        return response.content

    # ---- optimization jobs ---------------------------------------------------------------

    def optimize(
        self,
        model: str,
        request: OptimizationCreate | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> JobRead[OptimizationCreate, OptimizationResult]:
        """Queue an optimization (a request, or its fields: ``layer``, ``channels``, ...)."""
        body = request or OptimizationCreate(**fields)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._request(
            "POST",
            f"/v1/models/{model}/optimizations",
            content=body.model_dump_json(exclude_unset=True),
            headers={"Content-Type": "application/json", **headers},
        )
        return OptimizationJob.model_validate_json(response.content)

    # ---- dissection jobs -----------------------------------------------------------------

    def dissect(
        self,
        model: str,
        request: DissectionCreate | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> JobRead[DissectionCreate, DissectionResult]:
        """Queue a dissection (a request, or its fields: ``dataset``, ``layers``, ``method``,
        ``quantile``, ``iou_threshold``, ``k``); :meth:`wait` for its result."""
        body = request or DissectionCreate(**fields)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._request(
            "POST",
            f"/v1/models/{model}/dissections",
            content=body.model_dump_json(exclude_unset=True),
            headers={"Content-Type": "application/json", **headers},
        )
        return DissectionJob.model_validate_json(response.content)

    def dissection_png(self, job_id: str, layer: str, channel: int) -> bytes:
        """A unit's top images with its mask and its label's concept mask, as PNG."""
        return self._request(
            "GET",
            f"/v1/jobs/{job_id}/dissections/{layer}/{channel}",
            headers={"Accept": "image/png"},
        ).content

    def save_dissection(
        self, job: JobRead[Any, Any], folder: str | Path, units: int = 8
    ) -> list[Path]:
        """Write a succeeded dissection to ``folder``: ``dissection.json`` (the result) and,
        per layer, the PNGs of its ``units`` best-scoring units
        (``<layer>/<rank>-unit<channel>-<label>.png``). The paths written, JSON first."""
        if job.result is None:
            raise JobFailed(job)
        result = DissectionResult.model_validate(job.result)
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        written = [out / "dissection.json"]
        written[0].write_text(result.model_dump_json(indent=2), encoding="utf-8")
        for layer in result.layers:
            best = sorted(layer.units, key=lambda u: (-u.score, u.channel))[:units]
            for rank, unit in enumerate(best):
                if not unit.top:
                    continue
                label = "".join(c if c.isalnum() or c in "-_" else "_" for c in unit.label or "")
                path = out / layer.name / f"{rank:03d}-unit{unit.channel}-{label}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self.dissection_png(job.id, layer.name, unit.channel))
                written.append(path)
        return written

    def job(self, job_id: str) -> JobRead[Any, Any]:
        """A job of any kind; optimization and dissection jobs typed."""
        return _job(self._request("GET", f"/v1/jobs/{job_id}").content)

    def cancel(self, job_id: str) -> JobRead[Any, Any]:
        return _job(self._request("POST", f"/v1/jobs/{job_id}/cancel").content)

    def wait(
        self,
        job_id: str,
        progress: bool | Callable[[JobRead[Any, Any]], None] = False,
        timeout: float | None = None,
        poll_s: float = 0.5,
        stream: bool = True,
    ) -> JobRead[Any, Any]:
        """Wait for a job to end; the finished job. ``JobFailed`` unless it succeeded.

        Follows the job's event stream (``GET /v1/jobs/{id}/events``): each change as the
        service sees it, no polling. Where the stream cannot be had or breaks off (a proxy
        that does not pass it, a service restarting), and with ``stream=False``, it polls
        every ``poll_s`` seconds instead. ``progress``: ``True`` draws a progress bar on
        stderr (tqdm); a callable is called with the job at each change (each poll when
        polling). ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress is True:
            from tqdm import tqdm

            bar = tqdm(total=1, unit="step", desc=f"job {job_id[:8]}", leave=True)

        def show(job: JobRead[Any, Any]) -> None:
            if callable(progress):
                progress(job)
            if bar is not None and job.progress is not None:
                bar.total = job.progress.total
                bar.n = job.progress.step
                bar.set_postfix_str(job.status.value, refresh=False)
                bar.refresh()

        try:
            job = self._follow(job_id, show, deadline) if stream else None
            if job is None:
                job = self._poll(job_id, show, deadline, poll_s)
        finally:
            if bar is not None:
                bar.close()
        if job.status != JobStatus.SUCCEEDED:
            raise JobFailed(job)
        return job

    def _poll(
        self,
        job_id: str,
        show: Callable[[JobRead[Any, Any]], None],
        deadline: float | None,
        poll_s: float,
    ) -> JobRead[Any, Any]:
        """Read the job every ``poll_s`` seconds until it ends."""
        while True:
            job = self.job(job_id)
            show(job)
            if job.status.finished:
                return job
            _check_deadline(job_id, deadline, job.status.value)
            time.sleep(poll_s)

    def _follow(
        self, job_id: str, show: Callable[[JobRead[Any, Any]], None], deadline: float | None
    ) -> JobRead[Any, Any] | None:
        """The finished job, read once its stream's ``end`` event came; None where the
        stream could not be followed to its end (the caller polls instead). A stream that
        lasted its longest (``expired``) is opened again."""
        while True:
            _check_deadline(job_id, deadline, "not finished")
            base = self._http.timeout
            read_s = base.read
            if deadline is not None:  # wake up in time to stop, even on a quiet stream
                left = max(0.1, deadline - time.monotonic())
                read_s = left if read_s is None else min(read_s, left)
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    timeout=httpx.Timeout(
                        connect=base.connect, read=read_s, write=base.write, pool=base.pool
                    ),
                ) as response:
                    if not response.is_success:  # no such job, or no streams here: a
                        return None  # read tells which (and raises for the first)
                    for name, data in server_sent_events(response.iter_lines()):
                        if name == "progress":
                            show(_job(data.encode()))
                        elif name == "end":
                            job = self.job(job_id)  # with its result, as a read gives it
                            show(job)
                            return job
                        elif name == "expired":
                            break  # open it again
                        elif name == "error":
                            return None  # gone or unreadable now: a read tells how
                        _check_deadline(job_id, deadline, "not finished")
                    else:
                        return None  # ended without its end event
            except httpx.ReadTimeout:
                _check_deadline(job_id, deadline, "not finished")
                return None
            except httpx.TransportError:
                return None

    def result_png(self, job: JobRead[Any, Any]) -> bytes:
        """The grid PNG of a succeeded job: inline when the job carries it, else fetched from
        ``/v1/jobs/{id}/result.png``."""
        if job.result is None:
            raise JobFailed(job)
        grid = OptimizationResult.model_validate(job.result).grid
        if grid is not None:
            return base64.b64decode(grid)
        return self._request("GET", f"/v1/jobs/{job.id}/result.png").content

    def save_result(self, job: JobRead[Any, Any], path: str | Path) -> Path:
        """Write a succeeded job's grid PNG to ``path``."""
        out = Path(path)
        out.write_bytes(self.result_png(job))
        return out

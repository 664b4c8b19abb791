"""The client's methods for reading a model: dissections (what each unit detects) and the
attribution methods' list and raw maps. A base of :class:`cnnviz_client.client.Client`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from cnnviz_client.errors import JobFailed
from cnnviz_client.transport import PNG, Image, Transport, _image_request, _json_body
from schemas.attributions import AttributionMethodList, AttributionsCreate
from schemas.dissection import DissectionCreate, DissectionGridRead, DissectionResult
from schemas.jobs import JobRead

__all__ = ["Analysis", "DissectionJob"]

DissectionJob = JobRead[DissectionCreate, DissectionResult]


class Analysis(Transport):
    """Dissection and attribution methods, on the transport's ``_send`` and ``submit``."""

    # ---- attribution methods --------------------------------------------------------------

    def attribution_methods(self, model: str | None = None) -> AttributionMethodList:
        """The service's attribution methods, their options and costs (in images for
        ``model``): the one list the viewer and the CLI read."""
        params = {"model": model} if model is not None else {}
        response = self._send("attribution_methods", {}, params=params)
        return AttributionMethodList.model_validate_json(response.content)

    def attribute_raw(
        self,
        model: str,
        image: Image | None = None,
        sample: str | None = None,
        format: Literal["npy", "safetensors"] = "npy",
        **fields: Any,
    ) -> bytes:
        """The maps themselves, float32 at the model's input size: ``(targets, H, W)`` (or
        ``(targets, C, H, W)``), exactly what the faithfulness metrics rank. ``fields``: as
        :meth:`attribute` takes them (``method``, ``target``, ``layer``, ...)."""
        request = _image_request(AttributionsCreate, image, sample, fields)
        body = _json_body(request)
        return self._send("attribute", {"model": model}, params={"format": format}, **body).content

    # ---- dissection ------------------------------------------------------------------------

    def dissect(
        self,
        model: str,
        request: DissectionCreate | None = None,
        idempotency_key: str | None = None,
        reuse: bool = True,
        **fields: Any,
    ) -> DissectionJob:
        """Queue a dissection (a request, or its fields: ``dataset``, ``layers``, ``method``,
        ``quantile``, ``iou_threshold``, ``k``); :meth:`wait` for its result."""
        body = request or DissectionCreate(**fields)
        job = self.submit("dissection", model, body, idempotency_key, reuse)
        return DissectionJob.model_validate(job.model_dump())

    def dissection_grid(self, job_id: str, layer: str, channel: int) -> DissectionGridRead:
        """A unit's top images, its mask and its label's concept mask, with their numbers."""
        where = {"job_id": job_id, "layer": layer, "channel": channel}
        response = self._send("dissection_grid", where)
        return DissectionGridRead.model_validate_json(response.content)

    def dissection_png(self, job_id: str, layer: str, channel: int) -> bytes:
        """The same picture as a PNG."""
        where = {"job_id": job_id, "layer": layer, "channel": channel}
        return self._send("dissection_grid", where, headers=PNG).content

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

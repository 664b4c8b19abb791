"""The client's and the CLI's dissection: queue, wait with a bar, save JSON and PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cnnviz_client.cli import main
from cnnviz_client.client import Client
from schemas.dissection import DissectionResult


def test_dissect_waits_with_a_progress_bar_and_saves_json_and_pngs(
    service_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dissected"
    args = ["--url", service_url, "dissect", "-m", "shapes", "-d", "shapes", "-l", "fc"]
    options = ["--method", "labels", "-k", "8", "--units", "3", "--mis-encoder", "shapes:flatten"]
    code = main([*args, *options, "--wait", "-o", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "2400/2400" in captured.err  # the bar reached the last image
    assert "fc: 12 detector(s) of 12 units" in captured.out
    result = DissectionResult.model_validate(json.loads((out / "dissection.json").read_text()))
    assert result.method == "labels" and len(result.layers[0].units) == 12
    assert result.mis_encoder is not None and result.mis_encoder.layer == "flatten"
    assert all(u.mis is not None and 0.5 < u.mis <= 1 for u in result.layers[0].units)
    pngs = sorted((out / "fc").glob("*.png"))
    assert len(pngs) == 3 and pngs[0].name.startswith("000-unit")
    with Image.open(pngs[0]) as picture:
        assert picture.format == "PNG" and picture.size == (8 * 64 + 9 * 2, 64 + 2 * 2)


def test_the_client_types_a_dissection_job(service_url: str) -> None:
    with Client(service_url) as client:
        job = client.dissect("shapes", dataset="shapes", layers=["fc"], method="labels", k=2)
        done = client.wait(job.id)
        assert isinstance(done.result, DissectionResult)
        assert done.request.method == "labels"
        png = client.dissection_png(job.id, "fc", 0)
        assert png.startswith(b"\x89PNG")

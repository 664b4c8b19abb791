"""The ``cnnviz`` commands for data sets, filter weights, attributions and exemplars; and
``serve``/``worker`` where the server is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cnnviz_client import cli
from cnnviz_client.cli import main
from tests.client.conftest import SMALL_IMAGES, CliRun


def test_datasets_lists_each_with_its_size(cnnviz_run: CliRun) -> None:
    lines = {line.split()[0]: line for line in cnnviz_run("datasets").out.splitlines()}
    assert f" {SMALL_IMAGES + 1} images " in lines["small"]
    assert "generated shapes" in lines["small"]


def test_weights_writes_the_kernels_grid(cnnviz_run: CliRun, tmp_path: Path) -> None:
    out = tmp_path / "kernels.png"
    printed = cnnviz_run(
        "weights", "-m", "shapes", "-l", "block1.conv", "-f", "0-3",
        "--scale", "10", "--columns", "4", "-o", str(out),
    ).out  # fmt: skip
    with Image.open(out) as grid:
        assert grid.size == (4 * 30 + 5, 30 + 2)  # 4 tiles of 3×3 kernels at 10×
    assert "block1.conv Conv2d [16, 3, 3, 3], 4 filters (rgb) in 1×4" in printed


def test_attribute_writes_one_picture_per_target(cnnviz_run: CliRun, tmp_path: Path) -> None:
    out = tmp_path / "why.png"
    printed = cnnviz_run(
        "attribute", "--sample", "star", "-m", "shapes", "--method", "gradcam",
        "-l", "block4.relu", "-t", "star", "-t", "2", "--picture", "map", "-o", str(out),
    ).out  # fmt: skip
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["why-star.png", "why-triangle.png"]  # class 2 is the triangle
    assert "gradcam for star, peak at y=" in printed
    assert len([line for line in printed.splitlines() if " score=" in line]) == 5  # top 5


def test_attribute_refuses_a_bad_request_before_sending_it(
    service_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["--url", service_url, "attribute", "--sample", "star", "-m", "shapes", "--method", ""]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("cnnviz: invalid request: method: ")
    assert "Traceback" not in err


def test_exemplars_waits_and_draws_a_channels_top_images(
    cnnviz_run: CliRun, tmp_path: Path
) -> None:
    out = tmp_path / "top.png"
    printed = cnnviz_run(
        "exemplars", "-m", "shapes", "-d", "small", "-l", "block3.relu",
        "-k", "4", "--wait", "-q", "--channel", "5", "-o", str(out),
    ).out  # fmt: skip
    assert f"{SMALL_IMAGES} images of small ranked for 64 channels of block3.relu" in printed
    assert f"{out}: top 4 of channel 5: " in printed
    with Image.open(out) as grid:
        assert grid.format == "PNG"


def test_exemplars_without_wait_prints_the_job_id(cnnviz_run: CliRun) -> None:
    job_id = cnnviz_run("exemplars", "-m", "shapes", "-d", "small", "-l", "fc").out.strip()
    assert len(job_id) >= 8 and " " not in job_id


@pytest.mark.parametrize(("command", "needs"), [("serve", "uvicorn"), ("worker", "celery")])
def test_serve_and_worker_say_so_where_the_server_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, command: str, needs: str
) -> None:
    real = importlib.util.find_spec

    def without_server(name: str, *args: Any) -> Any:
        return None if name in ("service", "workers", needs) else real(name, *args)

    monkeypatch.setattr(cli.importlib.util, "find_spec", without_server)
    with pytest.raises(SystemExit) as caught:
        main([command])
    message = str(caught.value.code)
    assert message.startswith(f"cnnviz {command} needs the server, which is not installed here")
    assert "pip install -e . -e ./client -e './server[server]'" in message

"""The ``cnnviz`` command: what it writes, what it prints, and errors without a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from PIL import Image

from cnnviz_client import Client
from cnnviz_client.cli import parse_channels, versus_line
from schemas.optimization import OptimizationResult
from tests.client.conftest import CliRun

ROOT = Path(__file__).resolve().parents[2]
SMALL = "small"  # the data set of the service_url fixture (tests.jobs.datasets.SMALL)


def test_channel_ranges() -> None:
    assert parse_channels("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_channels("all") == "all"


def test_maps_writes_the_grid(cnnviz_run: CliRun, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (80, 60), (10, 200, 30)).save(photo)
    out = tmp_path / "maps.png"
    printed = cnnviz_run("maps", str(photo), "-m", "shapes", "-l", "block1.conv", "-o", str(out))
    with Image.open(out) as grid:
        assert grid.size == (4 * 64 + 5, 4 * 64 + 5)  # 16 tiles, 1 px padding
    assert "block1.conv [16, 64, 64], 16 channels in 4×4 tiles of 64×64" in printed.out


def test_optimize_waits_with_a_progress_bar_and_saves_the_patterns(
    cnnviz_run: CliRun, tmp_path: Path
) -> None:
    out = tmp_path / "patterns.png"
    captured = cnnviz_run(
        "optimize", "-m", "shapes", "-l", "block3.relu", "-c", "0-3",
        "--steps", "24", "--seed", "5", "--wait", "-o", str(out),
    )  # fmt: skip
    assert "24/24" in captured.err  # the bar reached the last step
    assert "/1 " not in captured.err and "/1[" not in captured.err  # never a made-up total
    assert f"{out}: 4 image(s) of block3.relu" in captured.out
    with Image.open(out) as grid:
        assert grid.format == "PNG"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNNVIZ_")}
    return subprocess.run(
        [sys.executable, "-m", "cnnviz_client", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_error_is_printed_from_the_problem_without_a_traceback(service_url: str) -> None:
    done = run_cli(
        "--url", service_url, "optimize", "-m", "shapes", "-l", "block3.relu", "-c", "99"
    )
    assert done.returncode == 1
    assert done.stderr.startswith("cnnviz: error 422 invalid_argument: ")
    assert "99" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_service_is_said_plainly() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run_cli("--url", f"http://127.0.0.1:{port}", "models")
    assert done.returncode == 2
    assert f"cannot reach the service at http://127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_several_processes_with_in_process_jobs() -> None:
    done = run_cli("serve", "--workers", "2")
    assert done.returncode == 1
    assert "--workers > 1 needs CNNVIZ_REDIS_URL" in done.stderr


def test_methods_and_attribute(cnnviz_run: CliRun, tmp_path: Path) -> None:
    listed = cnnviz_run("methods", "-m", "shapes").out
    assert "scorecam" in listed and "1 + channels" in listed and "targets × steps = 64" in listed
    assert "[sanity: unknown]" in listed  # no check has run on this service
    out = tmp_path / "a.png"
    printed = cnnviz_run(
        "attribute", "--sample", "star", "-m", "shapes",
        "--method", "gradcam", "-l", "block4.relu", "--metrics", "-o", str(out),
    ).out  # fmt: skip
    assert "gradcam for star" in printed and "deletion AUC" in printed
    with Image.open(out) as picture:
        assert picture.size == (64, 64)


def test_optimize_against_an_exemplars_job_prints_each_patterns_figures(
    service_url: str, cnnviz_run: CliRun
) -> None:
    with Client(service_url) as client:
        mined = client.exemplars("shapes", dataset=SMALL, layers=["block3.relu"], k=4)
        mined_id = client.wait(mined.id).id
        typed = client.wait(
            client.optimize(
                "shapes", layer="block3.relu", channels=[2], steps=8, exemplars_job=mined_id
            ).id
        )
    assert isinstance(typed.result, OptimizationResult)
    seen = typed.result.units[0].vs_dataset
    assert seen is not None and seen.exemplars_job == mined_id and seen.top_k == 4
    printed = cnnviz_run(
        "optimize", "-m", "shapes", "-l", "block3.relu", "-c", "2",
        "--steps", "8", "--exemplars-job", mined_id, "--wait", "-q",
    ).out  # fmt: skip
    # The same request, reused: the same figures, printed as the CLI's one line.
    assert versus_line(2, seen) in printed

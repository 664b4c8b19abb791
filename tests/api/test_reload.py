"""An edit of the models file reaches the running API: GET /v1/models, /readyz, the models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest

from service.main import create_app
from tests.api.conftest import make_settings, serve
from tests.core.test_reload import TINY, rewrite


def test_the_running_api_follows_the_models_file(tmp_path: Path) -> None:
    models_file = tmp_path / "models.toml"
    rewrite(models_file, TINY.format(name="a", size=16))
    settings = make_settings(models_file, model_store=tmp_path / "store", models_poll_interval=0)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/v1/models/a/layers").json()["input_shape"] == [1, 16, 16]
        rewrite(models_file, TINY.format(name="a", size=24) + TINY.format(name="b", size=8))
        assert http.get("/v1/models/a/layers").json()["input_shape"] == [1, 24, 24]
        assert http.get("/v1/models/b/layers").status_code == 200

        rewrite(models_file, "[models.a\n")
        listed = http.get("/v1/models").json()
        assert {m["name"] for m in listed["models"]} == {"a", "b", "shapes"}
        assert "cannot read models file" in listed["problems"][0]
        ready = http.get("/readyz").json()
        assert "cannot read models file" in ready["checks"]["models"]["problems"][0]
        assert http.get("/v1/models/b/layers").status_code == 200  # the last good entries

        rewrite(models_file, TINY.format(name="b", size=8))
        listed = http.get("/v1/models").json()
        assert listed["problems"] == []
        assert {m["name"] for m in listed["models"]} == {"b", "shapes"}
        assert http.get("/v1/models/a/layers").status_code == 404


def test_a_missing_extra_is_that_models_error_in_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def without_timm(name: str, *args: object) -> object:
        return None if name == "timm" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_timm)
    models_file = tmp_path / "models.toml"
    rewrite(models_file, '[models.t]\ntimm = "resnet10t"\nweights = "random"\n')
    settings = make_settings(models_file, model_store=tmp_path / "store")
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        listed = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
        assert "pip install 'cnnviz[timm]'" in listed["t"]["error"]
        assert listed["shapes"]["error"] is None
        answer = http.get("/v1/models/t/layers")
        assert answer.status_code == 503 and "cnnviz[timm]" in answer.json()["detail"]

"""Attribution: what captum and the service cost over a plain-torch Grad-CAM.

Three sides, alternated round by round so that all see the same machine:

- **floor**: Grad-CAM written here in plain torch (a forward hook on the layer,
  ``torch.autograd.grad`` of the top logit, channel weights, ReLU, bilinear upsampling) and
  the two PNGs a client gets (the heatmap and its overlay), from the preprocessed image;
- **core**: ``cnnviz.attribution.attribute`` (captum's ``LayerGradCam``, the prediction
  forward, the model restored) plus ``map_picture``, from the same image;
- **HTTP**: ``POST /v1/models/{model}/attributions`` through uvicorn with the sample image
  (decode, preprocess, the core, base64, JSON), p50.

    .venv/bin/python -m bench.attribution [--rounds 30] [--models shapes,resnet18]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import httpx
import torch
import torch.nn.functional as F
from PIL import Image

from bench.common import api_server, machine, models_file, ms, p50
from cnnviz.attribution import attribute, map_picture
from cnnviz.data.shapes import sample_image
from cnnviz.models import ModelRegistry

CASES = {"shapes": "block4.relu", "resnet18": "layer4"}


def plain_gradcam(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> bytes:
    """Grad-CAM of the top class by hand, and its heatmap and overlay PNGs."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(x.requires_grad_())
    finally:
        handle.remove()
    (activation,) = captured
    (grad,) = torch.autograd.grad(logits[0, logits[0].argmax()], activation)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear")[0, 0].detach()
    grey = (cam / cam.max().clamp(min=1e-12) * 255).to(torch.uint8).numpy()
    heat = io.BytesIO()
    Image.fromarray(grey).save(heat, format="PNG", compress_level=1)
    overlay = io.BytesIO()
    rgb = (x[0].detach().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(rgb).save(overlay, format="PNG", compress_level=1)
    return heat.getvalue() + overlay.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--models", default="shapes,resnet18")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        toml = models_file(Path(tmp))
        registry = ModelRegistry.from_file(toml)
        env = {"CNNVIZ_MODELS_FILE": str(toml)}
        with api_server(env) as server, httpx.Client(base_url=server.url, timeout=120) as http:
            for name in args.models.split(","):
                layer_name = CASES[name]
                loaded = registry.get(name)
                spec = loaded.spec
                model = loaded.module
                layer = dict(model.named_modules())[layer_name]
                x = spec.preprocess(sample_image("star"))
                body = {"sample": "star", "method": "gradcam", "layer": layer_name}
                floor: list[float] = []
                core: list[float] = []
                served: list[float] = []
                for round_ in range(args.rounds + 2):  # two rounds of warm-up
                    start = time.perf_counter()
                    with torch.enable_grad():
                        plain_gradcam(model, layer, x.clone())
                    t_floor = time.perf_counter() - start
                    start = time.perf_counter()
                    result = attribute(model, x, "gradcam", layer=layer_name)
                    map_picture(result.maps[0], x[0], signed=False)
                    t_core = time.perf_counter() - start
                    start = time.perf_counter()
                    response = http.post(f"/v1/models/{name}/attributions", json=body)
                    t_http = time.perf_counter() - start
                    assert response.status_code == 200, response.text
                    if round_ >= 2:
                        floor.append(t_floor)
                        core.append(t_core)
                        served.append(t_http)
                f, c, h = p50(floor), p50(core), p50(served)
                print(
                    f"{name} {layer_name} at {spec.input_size[0]} px, p50 of {args.rounds}: "
                    f"floor {ms(f)}, core {ms(c)} ({c / f:.2f}x), HTTP {ms(h)} ({h / f:.2f}x)"
                )


if __name__ == "__main__":
    main()

"""Render the README's pictures from the built-in model, with the public library only.

    .venv/bin/python scripts/render_pictures.py [--out docs/img] [--steps 256]

Writes ``triangle_block1_conv.png`` and ``triangle_block2_relu.png`` (feature-map grids of the
sample triangle) and ``patterns_block3_relu.png`` (optimized patterns of the first 16 channels
of ``block3.relu``, one batched job, default settings, seed 0).
"""

from __future__ import annotations

from docs_pictures import pictures_setup

from cnnviz import GridOptions, RenderSettings, feature_maps, objectives, visualize
from cnnviz.data.shapes import sample_image
from cnnviz.imaging import encode_png, image_grid


def main() -> None:
    args, loaded = pictures_setup(__doc__, steps=256)
    spec = loaded.spec
    x = spec.preprocess(sample_image("triangle"))
    layers = ["block1.conv", "block2.relu"]
    for maps in feature_maps(loaded.module, x, layers, GridOptions(scale=2)):
        path = args.out / f"triangle_{maps.name.replace('.', '_')}.png"
        path.write_bytes(maps.png())
        print(f"{path}: {maps.name} {list(maps.shape)}")

    result = visualize(
        loaded.module,
        objectives.channel("block3.relu", range(16)),
        input_shape=spec.input_shape,
        mean=spec.mean,
        std=spec.std,
        settings=RenderSettings(steps=args.steps, seed=0),
        model_name=spec.name,
    )
    grid, _ = image_grid(result.images, columns=8)
    path = args.out / "patterns_block3_relu.png"
    path.write_bytes(encode_png(grid))
    pairs = zip(result.objectives, result.initial_objectives, strict=True)
    gains = [final / max(start, 1e-6) for final, start in pairs]
    print(f"{path}: 16 channels, objective gain over the start: median {sorted(gains)[8]:.1f}x")


if __name__ == "__main__":
    main()

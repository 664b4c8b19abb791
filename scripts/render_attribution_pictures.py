"""Render the README's pictures of attributions and filter weights, with the library only.

    .venv/bin/python scripts/render_attribution_pictures.py [--out docs/img]

Writes ``attributions.png``: rows of images the built-in model classifies (the sample star
and three generated shapes), columns of the input and its attribution map for the top
prediction by each method, drawn over the input; and ``weights_block1_conv.png`` (the first
convolution's 16 filters as RGB tiles) and ``weights_block3_conv_slices.png`` (the 8
strongest filters of ``block3.conv``, 4 slices each).
"""

from __future__ import annotations

import io

from docs_pictures import pictures_setup
from PIL import Image, ImageDraw

from cnnviz.attribution import attribute, map_picture, method_names
from cnnviz.data.shapes import CLASSES, generate, sample_image
from cnnviz.weights import filter_weights

_SCALE = 3
_LABEL = 16


def _tile(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return image.resize((image.width * _SCALE, image.height * _SCALE), Image.Resampling.NEAREST)


def main() -> None:
    args, loaded = pictures_setup(__doc__)
    spec = loaded.spec
    generated, labels = generate(12, seed=5)
    shapes = [i for i in range(12) if CLASSES[labels[i]] in ("triangle", "cross", "hexagon")]
    pictures = [sample_image("star")] + [
        Image.fromarray(generated[i].permute(1, 2, 0).numpy()) for i in shapes[:3]
    ]
    methods = method_names()
    columns = ["input", *methods]
    size = spec.input_size[0] * _SCALE
    sheet = Image.new(
        "RGB", (len(columns) * (size + 4), len(pictures) * (size + 4) + _LABEL), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * (size + 4) + 4, 2), name, fill="black")
    for r, picture in enumerate(pictures):
        x = spec.preprocess(picture)
        seen = spec.denormalize(x[0])
        y0 = _LABEL + r * (size + 4)
        sheet.paste(picture.resize((size, size), Image.Resampling.NEAREST), (0, y0))
        for c, method in enumerate(methods, start=1):
            result = attribute(loaded.module, x, method, layer="block4.relu", labels=spec.labels)
            drawn = map_picture(result.maps[0], seen, signed=result.signed)
            sheet.paste(_tile(drawn.overlay), (c * (size + 4), y0))
        top = result.predictions[0]
        print(f"row {r}: predicted {top.label} ({top.probability:.3f})")
    path = args.out / "attributions.png"
    sheet.save(path, optimize=True)
    print(f"{path}: {len(pictures)} images × {len(methods)} methods")

    first = filter_weights(loaded.module, "block1.conv", scale=12, padding=2)
    (args.out / "weights_block1_conv.png").write_bytes(first.png())
    deeper = filter_weights(
        loaded.module, "block3.conv", mode="slices", top_k=8, k=4, scale=12, padding=2
    )
    (args.out / "weights_block3_conv_slices.png").write_bytes(deeper.png())
    print(f"weights: {first.mode} {list(first.weight_shape)}; filters {deeper.filters[::4]}")


if __name__ == "__main__":
    main()

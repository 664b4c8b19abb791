"""Render docs/attribution.md's picture and table: each method's map with its faithfulness.

    .venv/bin/python scripts/render_faithfulness.py [--out docs/img] [--images 8]

Writes ``attribution_scores.png``: the sample star, then each method's map for the top
prediction over it, its deletion and insertion AUCs written under it (RISE's protocol with
the defaults: 32 steps, 8 random maps, seed 0); and prints a Markdown table of each method's
mean AUCs and the random reference over the star and ``--images - 1`` generated shapes.
"""

from __future__ import annotations

import io

import torch
from docs_pictures import pictures_setup
from PIL import Image, ImageDraw

from cnnviz.attribution import attribute, faithfulness, get_method, map_picture, method_names
from cnnviz.data.shapes import generate, sample_image

_SCALE = 3
_TEXT = 30
_LAYER = "block4.relu"


def main() -> None:
    args, loaded = pictures_setup(__doc__, images=8)
    spec = loaded.spec
    generated, _ = generate(args.images - 1, seed=11)
    pictures = [sample_image("star")] + [
        Image.fromarray(image.permute(1, 2, 0).numpy()) for image in generated
    ]
    methods = method_names()
    size = spec.input_size[0] * _SCALE
    sheet = Image.new("RGB", ((len(methods) + 1) * (size + 4), size + 2 * _TEXT), "white")
    draw = ImageDraw.Draw(sheet)
    totals = {name: torch.zeros(4) for name in methods}
    for r, picture in enumerate(pictures):
        x = spec.preprocess(picture)
        if r == 0:
            sheet.paste(picture.resize((size, size), Image.Resampling.NEAREST), (0, _TEXT))
            draw.text((4, 4), "input", fill="black")
        for c, method in enumerate(methods, start=1):
            result = attribute(loaded.module, x, method, layer=_LAYER, labels=spec.labels)
            [scores] = faithfulness(loaded.module, x, result.maps, [result.targets[0].index])
            values = [
                scores.deletion_auc,
                scores.insertion_auc,
                scores.random_deletion_auc,
                scores.random_insertion_auc,
            ]
            totals[method] += torch.tensor(values, dtype=torch.float64).float()
            if r == 0:
                seen = spec.denormalize(x[0])
                drawn = map_picture(result.maps[0], seen, signed=result.signed)
                tile = Image.open(io.BytesIO(drawn.overlay)).convert("RGB")
                tile = tile.resize((size, size), Image.Resampling.NEAREST)
                left = c * (size + 4)
                sheet.paste(tile, (left, _TEXT))
                draw.text((left + 2, 4), get_method(method).title, fill="black")
                below = f"del {values[0]:.3f}\nins {values[1]:.3f}"
                draw.text((left + 2, _TEXT + size + 1), below, fill="black")
        print(f"image {r} done")
    path = args.out / "attribution_scores.png"
    sheet.save(path, optimize=True)
    print(f"{path}\n")
    print("| method | deletion AUC ↓ | insertion AUC ↑ | random deletion | random insertion |")
    print("|---|---|---|---|---|")
    for method in methods:
        d, i, rd, ri = (totals[method] / len(pictures)).tolist()
        print(f"| `{method}` | {d:.3f} | {i:.3f} | {rd:.3f} | {ri:.3f} |")


if __name__ == "__main__":
    main()

"""Train the embedded ``shapes`` model reproducibly from a seed and write its safetensors file.

    python scripts/train_shapes.py [--seed 0] [--out cnnviz/models/weights/shapes.safetensors]

Every epoch trains on freshly generated images (no image is seen twice, so no augmentation
is needed, and flips would change the labels of diagonal stripes anyway). Seeds:

- epoch ``e`` of a run with ``--seed s`` draws its images from seed ``1_000_000 * (s + 1) + e``;
- the held-out evaluation at the end uses seed ``EVAL_SEED``; seeds below 1,000,000 (such as
  the tests' 12345) are never used for training by any ``--seed >= 0``.

Then the head is calibrated (:func:`calibrate_head`): the convolutional features frozen, the
classifier ``fc`` alone is trained further on fresh images with a one-vs-rest loss added to the
cross-entropy, so that each logit ranks images of its own class above every other image, not
only above the other logits of the same image (see ``docs/dissection.md``: the ``labels``
method reads a logit's top images across the data set). ``--head-only`` runs this stage alone
on the weights already at ``--out``; the committed weights were made that way from the
4-epoch run of seed 0.

CPU only, one thread by default: a few minutes. Prints one line per epoch. The same seed and
the same ``--threads`` give the same weights on the same machine and library versions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnviz.data.shapes import CLASSES, generate
from cnnviz.imaging import normalize
from cnnviz.models.shapes import (
    MEAN,
    STD,
    WEIGHTS_PATH,
    ShapesNet,
    build_shapes_net,
    load_shapes_net,
)

EVAL_SEED = 999_999
EVAL_SIZE = 2_000


def train_seed(seed: int, epoch: int) -> int:
    """The data seed of one epoch; disjoint from every seed below 1,000,000."""
    return 1_000_000 * (seed + 1) + epoch


def to_input(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W) uint8`` → normalised ``float32``, channels-last (about 1.6× faster on CPU)."""
    x = normalize(images.float() / 255.0, MEAN, STD)
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def accuracy(model: ShapesNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (left in eval mode) on uint8 images."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), 250):
        logits = model(to_input(images[start : start + 250]))
        correct += int((logits.argmax(1) == labels[start : start + 250]).sum())
    return correct / len(labels)


def load_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (a fresh dict)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def head_seed(seed: int, step: int) -> int:
    """The data seed of one calibration draw; disjoint from :func:`train_seed`'s and the tests'."""
    return 1_000_000 * (seed + 1) + 500_000 + step


@torch.no_grad()  # not inference_mode: the head trains on these features
def pooled_features(model: ShapesNet, images: torch.Tensor) -> torch.Tensor:
    """The input of ``fc`` (the pooled ``block4`` features) of uint8 images, ``(N, C)``."""
    model.eval()
    return torch.cat([model.features(to_input(batch)) for batch in images.split(250)])


@torch.no_grad()
def column_precision(
    model: ShapesNet, images: torch.Tensor, labels: torch.Tensor, k: int
) -> list[float]:
    """Per class: the share of its own class among the ``k`` images that its logit ranks highest."""
    logits = model.fc(pooled_features(model, images))
    return [
        float((labels[logits[:, c].topk(k).indices] == c).float().mean())
        for c in range(logits.shape[1])
    ]


def calibrate_head(
    model: ShapesNet, seed: int, draws: int, samples: int, steps: int, lr: float
) -> None:
    """Train ``model.fc`` alone, features frozen, on ``cross_entropy + one-vs-rest BCE``.

    Cross-entropy alone only orders the logits *within* an image: a star logit may stay high
    on dots images as long as the dots logit is higher still. The one-vs-rest term asks each
    logit to be positive on its class and negative elsewhere, which orders images *within a
    logit* as well. Features are computed once per draw; the steps are full-batch AdamW.
    """
    features, targets = [], []
    for draw in range(draws):
        images, labels = generate(samples, seed=head_seed(seed, draw))
        features.append(pooled_features(model, images))
        targets.append(labels)
    x, y = torch.cat(features), torch.cat(targets)
    onehot = F.one_hot(y, num_classes=model.fc.out_features).float()
    optimizer = torch.optim.AdamW(model.fc.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        logits = model.fc(x)
        loss = F.cross_entropy(logits, y) + F.binary_cross_entropy_with_logits(logits, onehot)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"head step {step + 1}/{steps}  loss {loss.item():.4f}", flush=True)


def train_features(
    args: argparse.Namespace, held_out: tuple[torch.Tensor, torch.Tensor]
) -> ShapesNet:
    """The whole network trained from scratch with cross-entropy, as ``args`` say."""
    shuffle = torch.Generator().manual_seed(args.seed)
    model = build_shapes_net().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = -(-args.samples_per_epoch // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2
    )
    # A quarter of the held-out set each epoch: enough to follow progress, cheap to compute.
    peek = (held_out[0][: EVAL_SIZE // 4], held_out[1][: EVAL_SIZE // 4])

    started = time.perf_counter()
    for epoch in range(args.epochs):
        images, labels = generate(args.samples_per_epoch, seed=train_seed(args.seed, epoch))
        model.train()
        total_loss, correct = 0.0, 0
        for batch in torch.randperm(len(labels), generator=shuffle).split(args.batch_size):
            x, y = to_input(images[batch]), labels[batch]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
        n = len(labels)
        print(
            f"epoch {epoch + 1}/{args.epochs}  loss {total_loss / n:.4f}  "
            f"train acc {correct / n:.4f}  held-out acc {accuracy(model, *peek):.4f}  "
            f"{time.perf_counter() - started:.0f}s",
            flush=True,
        )

    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples-per-epoch", type=int, default=12_288)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--head-only", action="store_true", help="calibrate the head of --out's weights"
    )
    parser.add_argument("--head-draws", type=int, default=4)
    parser.add_argument("--head-steps", type=int, default=600)
    parser.add_argument("--head-lr", type=float, default=1e-2)
    args = parser.parse_args()
    if args.seed < 0:
        parser.error("--seed must be >= 0")

    # Same threads, same seed, deterministic kernels: the same weights on the same machine.
    # One thread by default: on a shared two-core machine, two OpenMP threads waiting on each
    # other's barriers were 3× slower than one; on an idle machine two are ~1.6× faster.
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    held_out = generate(EVAL_SIZE, seed=EVAL_SEED)
    if args.head_only:
        model = load_shapes_net(args.out)
        metadata = load_metadata(args.out)
    else:
        model = train_features(args, held_out)
        metadata = {
            "seed": str(args.seed),
            "threads": str(args.threads),
            "epochs": str(args.epochs),
            "samples_per_epoch": str(args.samples_per_epoch),
        }
    before = column_precision(model, *held_out, k=16)
    calibrate_head(
        model, args.seed, args.head_draws, args.samples_per_epoch, args.head_steps, args.head_lr
    )
    after = column_precision(model, *held_out, k=16)
    print(f"own-class share of each logit's top 16 held-out images: {before} -> {after}")
    final = accuracy(model, *held_out)
    print(f"held-out accuracy on {EVAL_SIZE} images (seed {EVAL_SEED}): {final:.4f}")
    model = model.to(memory_format=torch.contiguous_format)
    # Floats as float32; BatchNorm's int64 num_batches_tracked kept, so loading stays strict.
    state = {
        k: (v.float() if v.is_floating_point() else v).detach().contiguous()
        for k, v in model.state_dict().items()
    }
    metadata |= {
        "model": "shapes",
        "classes": json.dumps(list(CLASSES)),
        "mean": json.dumps(list(MEAN)),
        "std": json.dumps(list(STD)),
        "held_out_accuracy": f"{final:.4f}",
        "eval_seed": str(EVAL_SEED),
        "head_draws": str(args.head_draws),
        "head_steps": str(args.head_steps),
        "head_lr": str(args.head_lr),
        "head_top16_own_share": json.dumps([round(v, 4) for v in after]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()

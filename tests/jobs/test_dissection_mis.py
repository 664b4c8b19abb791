"""Dissection jobs with ``"mis": true``: each unit's MIS equals the protocol computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.errors import InvalidArgumentError
from schemas.dissection import DissectionCreate, MisEncoder
from tests.jobs.dissect_helpers import MODELS, dissect
from workers.kinds import Resources, get_kind

IMAGES = 240


def extremes(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 29 images of highest and of lowest activation, ties to the lower index."""
    ids = np.arange(len(unit))
    return np.lexsort((ids, -unit))[:29], np.lexsort((ids, unit))[:29]


def by_hand(unit: np.ndarray, embedded: np.ndarray, spread: float) -> float:
    """The protocol of docs/dissection.md in NumPy: one unit's activations ``(N,)``, the
    encoder's embeddings ``(N, D)``, the spread of the similarities."""
    top, bottom = extremes(unit)
    unit_vectors = embedded / np.linalg.norm(embedded, axis=1, keepdims=True)
    sims = unit_vectors @ unit_vectors.T

    def evidence(queries: np.ndarray) -> np.ndarray:
        return sims[np.ix_(queries, top[:9])].mean(1) - sims[np.ix_(queries, bottom[:9])].mean(1)

    margin = evidence(top[9:])[:, None] - evidence(bottom[9:])[None, :]
    return float((1 / (1 + np.exp(-margin / (0.5 * spread)))).mean())


def test_each_logits_mis_is_the_protocol_by_hand_and_shards_agree() -> None:
    datasets = DatasetRegistry(shapes_images=IMAGES)
    results = []
    for shard_images in (IMAGES, 70):
        resources = Resources(
            models=MODELS, datasets=datasets, shard_images=shard_images, batch_size=64
        )
        results.append(
            dissect(resources, dataset="shapes", layers=["fc"], method="labels", k=4, mis=True)
        )
    one, four = results
    assert (one.shards, four.shards) == (1, 4)
    assert one.mis_encoder == MisEncoder(model="shapes", layer="flatten")
    # Shards cut the batches elsewhere: float32 logits may differ in the last bit, so a
    # near tie among the top images may swap; the references and queries did not.
    assert [u.mis for u in one.layers[0].units] == [u.mis for u in four.layers[0].units]

    # The encoder's embeddings of every image.
    dataset = datasets.get("shapes")
    spec = MODELS.get("shapes").spec
    x = spec.normalize(dataset.pixels.float() / 255)
    with torch.inference_mode():
        out = MODELS.get("shapes").index.capture(x, ["fc", "flatten"])
    logits, embedded = out["fc"].double().numpy(), out["flatten"].double().numpy()
    # The spread is over the images embedded: every unit's references and queries.
    union = sorted({int(i) for c in range(12) for side in extremes(logits[:, c]) for i in side})
    vectors = embedded[union] / np.linalg.norm(embedded[union], axis=1, keepdims=True)
    spread = float((vectors @ vectors.T)[np.triu_indices(len(union), 1)].std(ddof=1))
    (layer,) = one.layers
    for unit in layer.units:
        assert unit.mis is not None and 0.5 < unit.mis <= 1.0
        expected = by_hand(logits[:, unit.channel], embedded, spread)
        assert unit.mis == pytest.approx(expected, abs=1e-6)


def test_without_mis_there_is_no_score_and_a_bad_encoder_is_refused() -> None:
    resources = Resources(models=MODELS, datasets=DatasetRegistry(shapes_images=48))
    result = dissect(resources, dataset="shapes", layers=["fc"], method="labels", k=2)
    assert result.mis_encoder is None
    assert all(u.mis is None for u in result.layers[0].units)
    kind = get_kind("dissection")
    body = {"dataset": "shapes", "layers": ["fc"], "mis": True}
    with pytest.raises(InvalidArgumentError, match="flaten"):
        request = DissectionCreate.model_validate(
            {**body, "mis_encoder": {"model": "shapes", "layer": "flaten"}}
        )
        kind.prepare(request, "shapes", resources)
    with pytest.raises(InvalidArgumentError, match='add "mis": true'):
        request = DissectionCreate.model_validate(
            {**body, "mis": False, "mis_encoder": {"model": "shapes", "layer": "flatten"}}
        )
        kind.prepare(request, "shapes", resources)
    with pytest.raises(InvalidArgumentError, match="nope"):
        request = DissectionCreate.model_validate(
            {**body, "mis_encoder": {"model": "nope", "layer": "fc"}}
        )
        kind.prepare(request, "shapes", resources)

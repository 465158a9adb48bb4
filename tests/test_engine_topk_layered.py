"""Ranking a layered DST where its layers are (``select_layered``) selects what ranking their
concatenation selects, the values included, also when most values tie (the zeros of inactive
latents); the chunked top-k's values are torch.topk's whatever the ties."""

from __future__ import annotations

import pytest
import torch

from worker.engine.topk import fast_topk, select_indices, select_layered


def _values(kind: str, n: int, generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(n, generator=generator)
    if kind == "sparse":  # ~2% nonzero, like a latent DST
        return torch.relu(torch.randn(n, generator=generator) - 2.0)
    if kind == "integers":  # ties everywhere
        return torch.randint(-2, 3, (n,), generator=generator).float()
    values = torch.zeros(n)  # all but a few zero
    values[torch.randint(0, n, (3,), generator=generator)] = 1.5
    return values


@pytest.mark.parametrize("kind", ["normal", "sparse", "integers", "few"])
@pytest.mark.parametrize(
    "sizes",
    [
        (5,),
        (3, 900, 40),
        (70_000, 2, 90_000, 70_001),
        (51_200,) * 12,
        (4_800,) * 12,
        (43_200,) * 12,
    ],
)
@pytest.mark.parametrize("k", [1, 10, 57])
@pytest.mark.parametrize("largest", [True, False])
def test_layered_selection_is_the_selection_of_the_concatenation(kind, sizes, k, largest):
    generator = torch.Generator().manual_seed(len(sizes) * 100 + k)
    parts = [_values(kind, n, generator) for n in sizes]
    flat = torch.cat(parts)
    k = min(k, flat.numel())
    expected = select_indices(flat, k, largest)
    indices, values = select_layered(parts, k, largest)
    assert indices.tolist() == expected.tolist()
    assert values.tolist() == flat[expected].tolist()


@pytest.mark.parametrize("kind", ["sparse", "integers", "few"])
@pytest.mark.parametrize("largest", [True, False])
def test_fast_topk_values_are_torch_topks_when_values_tie(kind, largest):
    values = _values(kind, 300_001, torch.Generator().manual_seed(7))
    expected = torch.topk(values, 11, largest=largest).values
    got_values, got_indices = fast_topk(values, 11, largest)
    assert torch.equal(got_values, expected)
    assert torch.equal(values[got_indices], got_values)
    assert len(set(got_indices.tolist())) == 11


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 10])
def test_layered_selection_with_infinities_is_the_selection_of_the_concatenation(largest, k):
    """Chunks across layers (``_chunk_candidates``) step aside when the threshold is infinite;
    finite thresholds among a few infinities select as the concatenation does."""
    generator = torch.Generator().manual_seed(k)
    for infinities in (3, 40):
        parts = [torch.randn(4_800, generator=generator) for _ in range(12)]
        for part in parts[:infinities]:
            part[7] = float("inf") if largest else float("-inf")
        flat = torch.cat(parts)
        expected = select_indices(flat, k, largest)
        indices, values = select_layered(parts, k, largest)
        assert indices.tolist() == expected.tolist()
        assert values.tolist() == flat[expected].tolist()


def test_layered_selection_reads_few_chunks_of_many_layers():
    """Twelve 50k-value layers: the candidates are the few chunks that can hold the best, not
    each layer's own top k (what makes the MLP DSTs of a node table cheap to rank)."""
    from worker.engine.topk import LAYER_CHUNK, _chunk_candidates

    generator = torch.Generator().manual_seed(3)
    parts = [torch.randn(51_200, generator=generator) for _ in range(12)]
    offsets = [51_200 * i for i in range(13)]
    values, indices = _chunk_candidates(parts, offsets, 11, True)
    assert values.numel() <= 21 * LAYER_CHUNK  # at most 2 x 11 - 1 chunks of 51,200 values
    assert indices.tolist() == sorted(indices.tolist())
    flat = torch.cat(parts)
    assert torch.equal(flat[indices], values)
    best = set(torch.topk(flat, 11).indices.tolist())
    assert best <= set(indices.tolist())

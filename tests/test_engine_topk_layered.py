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
@pytest.mark.parametrize("sizes", [(5,), (3, 900, 40), (70_000, 2, 90_000, 70_001)])
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

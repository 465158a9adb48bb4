"""The ranking primitives: chunked top-k equals torch.topk, and ties break deterministically."""

from __future__ import annotations

import pytest
import torch

from worker.engine.topk import fast_topk, select_layered, select_indices


@pytest.mark.parametrize("n", [1_000, 70_000, 300_001])
@pytest.mark.parametrize("k", [1, 11, 101])
@pytest.mark.parametrize("largest", [True, False])
def test_fast_topk_selects_what_torch_topk_selects(n, k, largest):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n + k))
    expected = torch.topk(values, k, largest=largest)
    got_values, got_indices = fast_topk(values, k, largest)
    assert torch.equal(got_values, expected.values)
    assert sorted(got_indices.tolist()) == sorted(expected.indices.tolist())


def test_fast_topk_never_returns_padding_when_infinities_tie_with_it():
    values = torch.full((200_003,), float("-inf"))
    values[5] = 1.0
    _, indices = fast_topk(values, 3, largest=True)
    assert indices[0] == 5
    assert bool((indices < values.numel()).all())


def test_select_indices_breaks_ties_by_position():
    values = torch.tensor([0.0, 2.0, 0.0, 2.0, 1.0, 0.0, 0.0])
    assert select_indices(values, 3, largest=True).tolist() == [1, 3, 4]
    assert select_indices(values, 3, largest=False).tolist() == [0, 2, 5]
    assert select_indices(values, 7, largest=False).tolist() == [0, 2, 5, 6, 4, 1, 3]


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [0, 1, 3, 7, 40, 200])
@pytest.mark.parametrize("values", ["distinct", "ties", "zeros"])
def test_layered_select_is_select_indices_of_the_concatenation(largest, k, values):
    torch.manual_seed(k)
    sizes = [13, 0, 70000, 1, 57]
    if values == "distinct":
        parts = [torch.randn(n) for n in sizes]
    elif values == "ties":  # few distinct values: ties across the k-th boundary and within
        parts = [torch.randint(-3, 4, (n,)).float() for n in sizes]
    else:
        parts = [torch.zeros(n) for n in sizes]
    flat = torch.cat(parts)
    count = min(k, flat.numel())
    chosen, picked = select_layered(parts, count, largest)
    expected = select_indices(flat, count, largest)
    assert chosen.tolist() == expected.tolist()
    assert picked.tolist() == flat[expected].tolist()

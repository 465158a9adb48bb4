"""The ranking primitives: chunked top-k equals torch.topk, and ties break deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.engine.topk import fast_topk, select_indices, select_layered


@pytest.mark.parametrize("n", [1_000, 70_000, 300_001])
@pytest.mark.parametrize("k", [1, 11, 101])
@pytest.mark.parametrize("largest", [True, False])
def test_fast_topk_selects_what_torch_topk_selects(n, k, largest):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n + k))
    expected = torch.topk(values, k, largest=largest)
    got_values, got_indices = fast_topk(values, k, largest)
    assert torch.equal(got_values, expected.values)
    assert sorted(got_indices.tolist()) == sorted(expected.indices.tolist())


@pytest.mark.parametrize("case", ["best in the tail", "tied chunk extremes", "nan", "few distinct"])
@pytest.mark.parametrize("largest", [True, False])
def test_fast_topk_searches_the_right_chunks(case, largest):
    g = torch.Generator().manual_seed(3)
    values = torch.randn(4096 * 40 + 77, generator=g)
    if case == "best in the tail":
        values[-5:] = torch.tensor([9.0, -9.0, 8.0, -8.0, 7.5])
    elif case == "tied chunk extremes":  # every chunk holds the extreme value: all are searched
        values[::4096] = 5.0 if largest else -5.0
    elif case == "nan":
        values[12345] = float("nan")
    else:
        values = torch.randint(0, 3, values.shape, generator=g).float()
    expected = torch.topk(values, 11, largest=largest)
    got_values, got_indices = fast_topk(values, 11, largest)
    assert torch.equal(got_values, expected.values) or (
        case == "nan" and torch.allclose(got_values, expected.values, equal_nan=True)
    )
    assert torch.allclose(values[got_indices], got_values, equal_nan=True)
    assert len(set(got_indices.tolist())) == 11


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


def _reference_selection(values, k: int, largest: bool) -> list[int]:
    """The k first indices ordered by value (best first), then by index: a full sort."""
    primary = -values if largest else values
    return np.lexsort((np.arange(values.size), primary))[:k].tolist()


@pytest.mark.parametrize("case", ["random", "a flat minimum", "mostly zeros", "ties in the tail"])
@pytest.mark.parametrize("k", [1, 10, 100])
@pytest.mark.parametrize("largest", [True, False])
def test_select_indices_of_long_tensors_is_the_ordering_by_value_then_index(case, k, largest):
    # long enough that only a few chunks are searched; ties must still go to the smallest index
    g = torch.Generator().manual_seed(k)
    values = torch.randn(4096 * 500 + 123, generator=g)
    if case == "a flat minimum":  # as GELU's: many distinct inputs, one float output
        values = torch.nn.functional.gelu(values * 3).clamp(min=-0.125)
    elif case == "mostly zeros":  # as masked attention probabilities
        values = torch.where(torch.rand(values.shape, generator=g) < 0.9, 0.0, values)
    elif case == "ties in the tail":
        values = values.clamp(-2.0, 2.0)
        values[-50:] = 2.0 if largest else -2.0
    got = select_indices(values, k, largest).tolist()
    assert got == _reference_selection(values.numpy(), k, largest)

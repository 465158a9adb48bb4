"""The shapes that keep a row's bits its own (worker/engine/families/layers.py `weight_product`,
worker/engine/tokens.py `scored_in_blocks`): a shared pass, or a product of many token-score
directions, gives each row exactly the float32 bits it gets computed alone. At gpt2-small's
sizes plain products do not (MKL changes kernels with the row count), which is what broke a
sweep point's byte identity with its single job in passes of 20 or more 20-token points.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from worker.engine.families.layers import weight_product
from worker.engine.tokens import read_scores, scored_in_blocks, write_scores


@pytest.mark.parametrize("inner", [768, 1024, 3072])
@pytest.mark.parametrize("width", [16, 20, 60])
def test_a_sequence_in_a_big_pass_gets_the_bits_it_gets_alone(inner, width):
    torch.manual_seed(inner + width)
    w = torch.randn(inner, 768) * 0.02
    x = torch.randn(40, width, inner)
    alone = torch.cat([weight_product(x[i : i + 1], w) for i in range(len(x))])
    for rows in (2, 7, 25, 40):
        together = weight_product(x[:rows], w)
        assert torch.equal(together, alone[:rows]), rows


def test_the_backward_runs_in_the_same_blocks():
    torch.manual_seed(1)
    w = torch.randn(2304, 768) * 0.02
    x = torch.randn(30, 20, 2304, requires_grad=True)
    weight_product(x, w).sum().backward()
    alone = []
    for i in range(len(x)):
        xi = x[i : i + 1].detach().requires_grad_(True)
        weight_product(xi, w).sum().backward()
        alone.append(xi.grad)
    assert torch.equal(x.grad, torch.cat(alone))


@pytest.mark.parametrize("score", [write_scores, read_scores])
def test_a_direction_scores_the_same_bits_whatever_it_is_scored_with(score):
    torch.manual_seed(2)
    d, vocab = 768, 50257
    weights = SimpleNamespace(
        lnf_g=torch.rand(d) + 0.5,
        W_U=torch.randn(d, vocab) * 0.02,
        W_E=torch.randn(vocab, d) * 0.02,
    )
    directions = torch.randn(150, d)
    alone = scored_in_blocks(score, weights, directions[:1])[0]
    for count in (2, 15, 16, 40, 150):
        rows = scored_in_blocks(score, weights, directions[:count])
        assert rows.shape == (count, vocab)
        assert torch.equal(rows[0], alone), count
    assert torch.equal(
        scored_in_blocks(score, weights, directions)[70],
        scored_in_blocks(score, weights, directions[70:71])[0],
    )

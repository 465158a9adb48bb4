"""Token lists scored together for the batches of one pass (worker/engine/token_lists.py): each
batch's lists are what it gets alone, whatever else was scored with it, and a batch whose lists
cannot be made is refused alone."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from worker.engine.token_lists import TokenLists
from worker.engine.tokens import Projection

D, VOCAB = 48, 3000


def _weights() -> SimpleNamespace:
    torch.manual_seed(5)
    w_u = torch.randn(D, VOCAB)
    w_u[:, 1000:1010] = w_u[:, 7:8]  # tied columns: ties across and inside the lists
    return SimpleNamespace(lnf_g=torch.rand(D) + 0.5, W_U=w_u, W_E=w_u.T.contiguous())


def _projections(seed: int, count: int) -> list[Projection]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for n in range(count):
        direction = torch.randn(D, generator=generator)
        coef = [1.5, -0.5, 0.0][n % 3]
        out.append(Projection(("content", seed, n), coef, lambda d=direction: d))
    return out


def _ask(lists: TokenLists, owner: int, projections, t: int = 7) -> list[dict]:
    scorer = lists.scorer(owner)
    flips = [n % 2 == 0 for n in range(len(projections))]
    return scorer.top_tokens(projections, "write", t, flips) + scorer.top_tokens(
        projections, "read", t + 2
    )


def _lists(weights, excluded=(3, 1000)) -> TokenLists:
    return TokenLists(weights, list(excluded), lambda i: f"<{i}>")


def test_each_batch_gets_its_lists_alone_whatever_it_is_scored_with():
    weights = _weights()
    asked = {owner: _projections(owner, count) for owner, count in enumerate([1, 5, 40, 90])}
    alone = {}
    for owner, projections in asked.items():
        lists = _lists(weights)
        wires = _ask(lists, owner, projections)
        assert all(w == {} for w in wires)  # filled only by fill()
        assert lists.fill() == {}
        alone[owner] = json.dumps(wires)
    together = _lists(weights)
    wires = {owner: _ask(together, owner, projections) for owner, projections in asked.items()}
    assert together.fill() == {}
    for owner in asked:
        assert json.dumps(wires[owner]) == alone[owner], owner
    first = json.loads(alone[2])[0]
    assert len(first["top"]) == 7 and {
        e["token"] for e in first["top"] + first["bottom"]
    }.isdisjoint({"<3>", "<1000>"})


def test_a_batch_asking_more_tokens_than_the_vocabulary_has_is_refused_alone():
    weights = _weights()
    lists = _lists(weights, excluded=range(0, VOCAB - 5))
    kept = lists.scorer(0).top_tokens(_projections(0, 3)[:1], "write", 4)
    lists.scorer(1).top_tokens(_projections(1, 3)[:1], "write", 6)
    refused = lists.fill()
    assert set(refused) == {1} and "cannot list 6 finite top tokens" in refused[1].message
    assert len(kept[0]["top"]) == 4

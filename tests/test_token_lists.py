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


def _sorted_reference(scores: torch.Tensor, t: int, largest: bool):
    """The t extreme values of each row by value, equal values by ascending token id: a stable
    sort of the whole row."""
    values, ids = torch.sort(scores, dim=1, descending=largest, stable=True)
    return values[:, :t], ids[:, :t]


def test_row_extremes_from_chunks_are_the_whole_rows_own():
    """`extremes` ranks chunk extremes first; what it lists is each whole row's t best (and
    worst) by value then token id, with ties inside the chunks, across them and at the list's
    boundary, infinities, excluded tokens, NaNs, and a vocabulary not a multiple of the chunk."""
    generator = torch.Generator().manual_seed(11)
    vocab, t = 64 * 60 + 37, 10
    rows = [torch.randn(vocab, generator=generator) for _ in range(6)]
    rows.append(torch.randint(-3, 4, (vocab,), generator=generator).float())  # ties everywhere
    boundary = torch.randn(vocab, generator=generator)
    boundary[[5, 700, 701, 3000, vocab - 1]] = 9.0  # a tie at the list's boundary
    boundary[[40, 1500, 2222, 3001, 3002, 3003, 3500, 3800]] = 10.0
    rows.append(boundary)
    infinite = torch.randn(vocab, generator=generator)
    infinite[[7, 900]], infinite[[8, vocab - 2]] = float("inf"), float("-inf")
    rows.append(infinite)
    tail = torch.randn(vocab, generator=generator)
    tail[-30:] = torch.linspace(20, 30, 30)  # the best all in the tail past the last chunk
    tail[-37:-30] = -torch.linspace(20, 30, 7)
    rows.append(tail)
    signed = torch.zeros(vocab)
    signed[::3] = -0.0
    rows.append(signed)
    scores = torch.stack(rows)
    excluded = torch.tensor([3, 1500, 900])
    from worker.engine.token_lists import extremes

    got = extremes(scores.clone(), t, excluded)
    for largest, values, ids in (
        (True, got.top_values, got.top_ids),
        (False, got.bottom_values, got.bottom_ids),
    ):
        masked = scores.clone()
        masked[:, excluded] = float("-inf") if largest else float("inf")
        ref_values, ref_ids = _sorted_reference(masked, t, largest)
        assert torch.equal(ids, ref_ids), largest
        assert torch.equal(values.view(torch.int32), ref_values.view(torch.int32)), largest
    with_nan = scores[:2].clone()
    with_nan[0, 100] = float("nan")
    nan_lists = extremes(with_nan.clone(), t, None)
    ref_values, ref_ids = _sorted_reference(with_nan[1:], t, True)
    assert torch.equal(nan_lists.top_ids[1:], ref_ids)

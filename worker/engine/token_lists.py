"""Top-token lists (protocol.md §5.7) for every batch answered together, from shared products.

Scoring directions against the vocabulary is the costliest step of a small TDB request on a CPU,
and a product of one batch's few directions streams the whole [d, V] matrix for a handful of
rows. So the batches of one shared pass do not score as they answer: each asks its
`TokenScorer` for lists and gets empty wire objects, and `TokenLists.fill` then scores every
distinct direction that any of them asked for once, in blocks of `MAX_SCORING_ROWS` rows, and
fills each object in place. A row's scores are the same bits in any such block
(`tokens.scored_in_blocks`), and its top and bottom lists are taken row by row with ties broken
by token id, so each batch's lists are what it gets alone: the same code runs when it is alone
(a pack of one). Lists never mix batches: a direction's list is its own row's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.errors import ActqError, RequestValidationError

from .families.base import ModelWeights
from .tokens import MAX_SCORING_ROWS, Projection, read_scores, scored_in_blocks, write_scores
from .topk import select_indices

ROW_CHUNK = 64  # vocabulary entries per chunk of a score row: its extreme is one vector pass


def _row_topk(scores: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``torch.topk(scores, k, dim=1)`` finds, from fewer values: each row's chunks of
    ROW_CHUNK scores reduced to their extremes, then the k chunks with the best extremes and the
    row's tail (the last V mod ROW_CHUNK scores) ranked. Those hold k values as good as the
    row's k best, each (a value outside them has k chosen chunks at least as good as its own):
    the same values, and the same tokens wherever the k-th and (k+1)-th best differ (where they
    tie, `_sorted_extremes` rescans the row). ~6x faster than the whole row's top-k on CPU.
    Rows with NaNs (amin and topk would order them differently) are ranked whole."""
    n, v = scores.shape
    chunks = v // ROW_CHUNK
    if chunks < 4 * k:
        return torch.topk(scores, k, dim=1, largest=largest)
    body = scores[:, : chunks * ROW_CHUNK].view(n, chunks, ROW_CHUNK)
    extremes = body.amax(dim=2) if largest else body.amin(dim=2)
    if bool(torch.isnan(extremes).any()) or bool(
        torch.isnan(scores[:, chunks * ROW_CHUNK :]).any()
    ):
        return torch.topk(scores, k, dim=1, largest=largest)
    best = torch.topk(extremes, k, dim=1, largest=largest).indices
    offsets = torch.arange(ROW_CHUNK, device=scores.device)
    columns = (best[:, :, None] * ROW_CHUNK + offsets).reshape(n, -1)
    tail = torch.arange(chunks * ROW_CHUNK, v, device=scores.device).expand(n, -1)
    columns = torch.cat([columns, tail], dim=1)
    values, at = torch.topk(scores.gather(1, columns), k, dim=1, largest=largest)
    return values, columns.gather(1, at)


def _sorted_extremes(
    scores: torch.Tensor, t: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the t extreme values ordered by value, equal values by ascending token id."""
    width = min(t + 1, scores.shape[1])
    values, ids = _row_topk(scores, width, largest)
    if width > t:  # a tie across the boundary: take the smallest ids among the tied values
        for row in torch.nonzero(values[:, t] == values[:, t - 1]).flatten().tolist():
            chosen = select_indices(scores[row], t, largest)
            ids[row, :t], values[row, :t] = chosen, scores[row, chosen]
    values, ids = values[:, :t], ids[:, :t]
    ids, perm = ids.sort(dim=1)
    values = values.gather(1, perm)
    order = values.sort(dim=1, descending=largest, stable=True).indices
    return values.gather(1, order), ids.gather(1, order)


@dataclass
class Extremes:
    """Top and bottom lists of score rows: values [n, t] and token ids [n, t]."""

    top_values: torch.Tensor
    top_ids: torch.Tensor
    bottom_values: torch.Tensor
    bottom_ids: torch.Tensor

    def finite_rows(self) -> list[bool]:
        """Whether each row has t finite values both ways (not so if t passes the vocabulary)."""
        top = torch.isfinite(self.top_values).all(dim=1)
        return (top & torch.isfinite(self.bottom_values).all(dim=1)).tolist()


def extremes(scores: torch.Tensor, t: int, excluded: torch.Tensor | None) -> Extremes:
    """§5.7 steps 1-2 on score rows (which are overwritten: excluded columns become ±inf)."""
    if excluded is not None:
        scores[:, excluded] = float("-inf")
    top_values, top_ids = _sorted_extremes(scores, t, largest=True)
    if excluded is not None:
        scores[:, excluded] = float("inf")
    bottom_values, bottom_ids = _sorted_extremes(scores, t, largest=False)
    return Extremes(top_values, top_ids, bottom_values, bottom_ids)


def _too_small(t: int) -> RequestValidationError:
    return RequestValidationError(f"cannot list {t} finite top tokens: the vocabulary is too small")


@dataclass
class _Asked:
    """One list a batch asked for: filled into ``wire`` (an empty dict until then)."""

    wire: dict
    projection: Projection
    kind: str  # "write" or "read"
    t: int
    flip: bool
    owner: object


class TokenLists:
    """The lists the batches of one pass asked for, scored together by `fill`.

    ``scored`` keeps each direction's lists, (kind, t, key) -> (Extremes, row) or None where the
    row has too few finite scores, across the packs of one `settle_groups` call."""

    def __init__(
        self,
        weights: ModelWeights,
        excluded: list[int],
        decode: Callable[[int], str],
        scored: dict | None = None,
    ):
        self.weights = weights
        self.decode = decode
        self.excluded = torch.tensor(excluded, device=weights.W_E.device) if excluded else None
        self.scored: dict[tuple, tuple[Extremes, int] | None] = {} if scored is None else scored
        self._asked: list[_Asked] = []
        self._zero_rows: dict[int, torch.Tensor] = {}

    def scorer(self, owner) -> TokenScorer:
        """The front one batch answers with; ``owner`` names it in what `fill` returns."""
        return TokenScorer(self, owner)

    def ask(self, projection: Projection, kind: str, t: int, flip: bool, owner) -> dict:
        """An empty wire object that `fill` fills with ``projection``'s lists."""
        wire: dict = {}
        self._asked.append(_Asked(wire, projection, kind, t, flip, owner))
        return wire

    def drop(self, owner) -> None:
        """Forget what ``owner`` asked for (its batch was refused)."""
        self._asked = [a for a in self._asked if a.owner != owner]

    def fill(self) -> dict[object, ActqError]:
        """Score every direction asked for, fill each wire object; the owners whose lists
        cannot be made (fewer than t finite scores), each with its error."""
        asked, self._asked = self._asked, []
        self._score([a for a in asked if a.projection.coef != 0])
        refused: dict[object, ActqError] = {}
        for a in asked:
            if a.owner in refused or a.projection.coef == 0:
                continue
            if self.scored[(a.kind, a.t, a.projection.key)] is None:
                refused[a.owner] = _too_small(a.t)
        by_t: dict[int, list[_Asked]] = {}
        for a in asked:
            if a.owner not in refused:
                by_t.setdefault(a.t, []).append(a)
        for t, group in by_t.items():
            values, ids = self._node_lists(group, t)
            for a, wire in zip(
                group, self.wires(values, ids, [a.flip for a in group]), strict=True
            ):
                a.wire.update(wire)
        return refused

    def _score(self, asked: list[_Asked]) -> None:
        """Each new direction once per kind, in blocks of MAX_SCORING_ROWS, listed for every t
        asked of it."""
        by_kind: dict[str, dict[tuple, tuple[Callable, set[int]]]] = {}
        for a in asked:
            key = a.projection.key
            if (a.kind, a.t, key) not in self.scored:
                entry = by_kind.setdefault(a.kind, {}).setdefault(
                    key, (a.projection.direction, set())
                )
                entry[1].add(a.t)
        for kind, entries in by_kind.items():
            score = write_scores if kind == "write" else read_scores
            keys = list(entries)
            for first in range(0, len(keys), MAX_SCORING_ROWS):
                block = keys[first : first + MAX_SCORING_ROWS]
                directions = torch.stack([entries[key][0]() for key in block])
                scores = scored_in_blocks(score, self.weights, directions)
                for t in sorted(set().union(*(entries[key][1] for key in block))):
                    rows = [n for n, key in enumerate(block) if t in entries[key][1]]
                    part = scores if len(rows) == len(block) else scores[rows]
                    ex = extremes(part, t, self.excluded)
                    for row, finite in enumerate(ex.finite_rows()):
                        key = block[rows[row]]
                        self.scored[(kind, t, key)] = (ex, row) if finite else None

    def _node_lists(self, asked: list[_Asked], t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, 2, t] values and ids (top row, bottom row) of each node asked for, gathered from
        its direction's lists in one indexing per scored block (one per node cost more than
        the lists): a negative coefficient swaps top and bottom, a zero one is an all-zero row."""
        by_block: dict[int, tuple[Extremes, list[int], list[int]]] = {}
        for n, a in enumerate(asked):
            if a.projection.coef != 0:
                ex, row = self.scored[(a.kind, t, a.projection.key)]
                entry = by_block.setdefault(id(ex), (ex, [], []))
                entry[1].append(n)
                entry[2].append(row)
        device = self.weights.W_E.device
        dtype = next(iter(by_block.values()))[0].top_values.dtype if by_block else torch.float32
        tops = torch.zeros(len(asked), t, dtype=dtype, device=device)
        bottoms = torch.zeros_like(tops)
        top_ids = torch.zeros(len(asked), t, dtype=torch.long, device=device)
        zero = [n for n, a in enumerate(asked) if a.projection.coef == 0]
        if zero:
            top_ids[torch.tensor(zero, device=device)] = self._zero_row_ids(t)
        bottom_ids = top_ids.clone()
        for ex, at, rows in by_block.values():
            at_t, rows_t = torch.tensor(at, device=device), torch.tensor(rows, device=device)
            tops[at_t], top_ids[at_t] = ex.top_values[rows_t], ex.top_ids[rows_t]
            bottoms[at_t], bottom_ids[at_t] = ex.bottom_values[rows_t], ex.bottom_ids[rows_t]
        coefs = [a.projection.coef if a.projection.coef != 0 else 0.0 for a in asked]  # no -0.0
        coef = torch.tensor(coefs, dtype=dtype, device=device)[:, None]
        swap = (coef < 0).expand(-1, t)
        top = (torch.where(swap, bottoms, tops), torch.where(swap, bottom_ids, top_ids))
        bottom = (torch.where(swap, tops, bottoms), torch.where(swap, top_ids, bottom_ids))
        values = torch.stack([coef * top[0], coef * bottom[0]], dim=1)
        return values, torch.stack([top[1], bottom[1]], dim=1)

    def _zero_row_ids(self, t: int) -> torch.Tensor:
        """An all-zero row ties everywhere: the t smallest ids that are not excluded (cached:
        inactive latents make many zero rows)."""
        if t not in self._zero_rows:
            allowed = torch.ones(
                self.weights.W_E.shape[0], dtype=torch.bool, device=self.weights.W_E.device
            )
            if self.excluded is not None:
                allowed[self.excluded] = False
            self._zero_rows[t] = torch.nonzero(allowed).flatten()[:t]
        return self._zero_rows[t]

    def wire(self, values: torch.Tensor, ids: torch.Tensor, flip: bool) -> dict:
        """§5.7 steps 4-6 of one node's [2, t] values and ids (`wires`)."""
        return self.wires(values[None], ids[None], [flip])[0]

    def wires(self, values: torch.Tensor, ids: torch.Tensor, flips: list[bool]) -> list[dict]:
        """§5.7 steps 4-6 of [n, 2, t] lists: normalise each by its larger first magnitude,
        decode, maybe swap; the tensors are read into Python once for all n."""
        m = torch.maximum(values[:, 0, 0].abs(), values[:, 1, 0].abs())[:, None, None]
        normalized = torch.where(m == 0, torch.zeros_like(values), values / m)
        decode = self.decode
        out = []
        for node_values, node_ids, node_normalized, flip in zip(
            values.tolist(), ids.tolist(), normalized.tolist(), flips, strict=True
        ):
            top, bottom = (
                [
                    {"token": decode(i), "scalar": v, "normalizedScalar": n}
                    for v, i, n in zip(vs, is_, ns, strict=True)
                ]
                for vs, is_, ns in zip(node_values, node_ids, node_normalized, strict=True)
            )
            out.append({"top": bottom, "bottom": top} if flip else {"top": top, "bottom": bottom})
        return out


class TokenScorer:
    """One batch's requests for top-token lists, answered when its pass's `TokenLists` fills."""

    def __init__(self, lists: TokenLists, owner):
        self.lists = lists
        self.owner = owner

    def top_tokens(
        self, projections: list[Projection], kind: str, t: int, flip: list[bool] | None = None
    ) -> list[dict]:
        """TopTokens wire objects, one per projection (`kind` is "write" or "read"): empty
        until the lists are filled, which happens before the batch's answer is given out."""
        return [
            self.lists.ask(projection, kind, t, flip is not None and flip[n], self.owner)
            for n, projection in enumerate(projections)
        ]

    def top_tokens_of_scores(self, scores: torch.Tensor, t: int) -> dict:
        """TopTokens of one given score row [V] (no factoring: e.g.
        vocab_token_write_to_input_direction), listed at once."""
        ex = extremes(scores[None].clone(), t, self.lists.excluded)
        if not ex.finite_rows()[0]:
            raise _too_small(t)
        values = torch.stack([ex.top_values[0], ex.bottom_values[0]])
        ids = torch.stack([ex.top_ids[0], ex.bottom_ids[0]])
        return self.lists.wire(values, ids, False)

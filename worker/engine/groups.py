"""Shared padded passes: independent groups of sub-requests run together, each answered as alone.

A group is the sub-requests of one batch (one job, or one point of a sweep). `run_groups` packs
whole groups into passes of as many rows as fit a memory budget, runs each pack as one padded
forward and at most one backward (the pack's seeds summed), and answers every group exactly as
`run_batch(group)` would: its own top-k unions (TDB unions top-k across the sub-requests of one
batch, never across groups), its own padded width for TDB's "position -1" quirks, and only the
gradients its own pass would have computed.

Exactly means byte for byte, which float32 BLAS does not give for free: MKL rounds a row
differently when it falls in the tail row block of a product, and attention products of fewer
than 16 keys round differently with the width. `inference.compute_width` pads every pass (alone
or shared) to shapes where neither happens; tests/test_engine_groups.py checks every golden case
alone against the same case in mixed packs, byte for byte.

Work that does not depend on the rows is done once for all groups: the token scores of every
direction any group of a pack asks for are scored together once the pack's groups have
answered, in products whose shape keeps each row's bits (`worker.engine.token_lists`), and a
direction one pack scored serves the later packs of the same call.

What a group's answer may still not share with its solo run: `inferenceTime` and the memory
fields, which describe the pass that computed it (the pack's).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.errors import ActqError
from models.wire import protocol as p

from .digests import digest_top_k, store_uses
from .hooks import Hooks
from .inference import compute_width, run_pass
from .planning import Paths, SubRequestPlan, plan_sub_request, requirements
from .responses import sub_response
from .token_lists import TokenLists
from .topk import Node
from .view import ElementView

DEFAULT_PASS_BYTES = 2 * 1024**3  # the activations one shared pass may hold (an estimate)


@dataclass
class _Group:
    index: int
    plans: list[SubRequestPlan]
    save_forward: set
    save_grad: set
    backward: bool  # whether this group alone runs a backward pass

    @property
    def width(self) -> int:
        return max(len(pl.tokens) for pl in self.plans)


def run_groups(
    groups: list[list[p.InferenceSubRequest]],
    model,
    paths: list[list[Paths]] | None = None,
    max_rows_per_pass: int | None = None,
) -> list[dict]:
    """One BatchedResponse (wire dict) per group, each what `run_batch(group)` alone returns.

    ``paths`` name each sub-request's fields for error messages (default: a batched request's);
    ``max_rows_per_pass`` caps the rows of one pass (default: as many as DEFAULT_PASS_BYTES
    holds). The first group that the engine refuses raises its error."""
    outcomes = settle_groups(groups, model, paths, max_rows_per_pass)
    for outcome in outcomes:
        if isinstance(outcome, ActqError):
            raise outcome
    return outcomes


def settle_groups(
    groups: list[list[p.InferenceSubRequest]],
    model,
    paths: list[list[Paths]] | None = None,
    max_rows_per_pass: int | None = None,
    on_answer=None,
) -> list[dict | ActqError]:
    """`run_groups`, with a refused group's error in its place instead of raised (the others are
    still answered, each as alone). ``on_answer(i, outcome)`` is called as soon as group i's
    outcome is known, before later packs run."""
    if paths is None:
        paths = [default_paths(group) for group in groups]
    outcomes: list = [None] * len(groups)

    def settle(i: int, outcome) -> None:
        outcomes[i] = outcome
        if on_answer is not None:
            on_answer(i, outcome)

    planned = []
    for i, (group, group_paths) in enumerate(zip(groups, paths, strict=True)):
        try:
            planned.append(_plan_group(i, group, group_paths, model))
        except ActqError as error:
            settle(i, error)
    scores: dict = {}  # every direction's token lists, scored once for all packs
    for pack in packs(planned, model, max_rows_per_pass):
        _settle_pack(pack, model, settle, scores)
    return outcomes


def default_paths(group: list[p.InferenceSubRequest]) -> list[Paths]:
    return [Paths.batched(i, sub.processing_request_spec_by_name) for i, sub in enumerate(group)]


def _plan_group(index: int, group, group_paths, model) -> _Group:
    plans = [
        plan_sub_request(sub, path, model) for sub, path in zip(group, group_paths, strict=True)
    ]
    save_forward, save_grad, needs_backward = requirements(plans, model)
    seeded = any(pl.element.loss is not None or pl.element.trace is not None for pl in plans)
    return _Group(index, plans, save_forward, save_grad, needs_backward and seeded)


def rows_per_pass(model, width: int, budget: int = DEFAULT_PASS_BYTES) -> int:
    """How many rows of ``width`` tokens one pass holds within ``budget`` bytes: a float32
    estimate of what a pass keeps for its backward (residual, attention and MLP activations per
    layer, and the logits twice)."""
    w = model.weights
    t = compute_width(width)
    per_layer = 12 * w.d_model + 4 * w.layers[0].w_in.shape[1] + 3 * t * w.n_heads
    per_token = w.n_layers * per_layer + 2 * w.W_U.shape[1]
    return max(1, budget // (4 * t * per_token))


def packs(planned: list[_Group], model, max_rows: int | None = None) -> list[list[_Group]]:
    """Whole groups, in order, into packs of at most ``max_rows`` rows (a bigger group alone)."""
    if not planned:
        return []
    if model.autoencoders.all():
        # An AE's pass decides for all its rows whether to decode and which latents' columns to
        # compute (autoencoders.injection, .model), so a group's last bits would depend on its
        # pack: with AEs served, each group keeps a pass of its own.
        return [[group] for group in planned]
    if max_rows is None:
        max_rows = rows_per_pass(model, max(g.width for g in planned))
    out: list[list[_Group]] = []
    rows = 0
    for group in planned:
        if out and rows + len(group.plans) <= max_rows:
            out[-1].append(group)
            rows += len(group.plans)
        else:
            out.append([group])
            rows = len(group.plans)
    return out


def _settle_pack(pack: list[_Group], model, settle, scores: dict) -> None:
    try:
        answers = answer_pack(pack, model, scores)
    except ActqError as error:
        if len(pack) == 1:
            settle(pack[0].index, error)
            return
        for group in pack:  # which group the pass refused is unknown: each runs alone
            _settle_pack([group], model, settle, scores)
        return
    for group, answer in zip(pack, answers, strict=True):
        settle(group.index, answer)


def answer_pack(pack: list[_Group], model, scores: dict | None = None) -> list[dict | ActqError]:
    """Run one shared pass for ``pack`` and answer each group from its own rows.

    A group whose answer the engine refuses (a spec its values cannot serve) gets its error; a
    refusal of the pass itself raises. ``scores``: the directions' token lists, kept for later
    packs. The groups' token lists are scored together after all have answered, and filled in
    before the answers are returned."""
    scores = {} if scores is None else scores
    plans = [pl for group in pack for pl in group.plans]
    save_forward = set().union(*(g.save_forward for g in pack))
    save_grad = set().union(*(g.save_grad for g in pack if g.backward))
    needs_backward = any(g.backward for g in pack)
    widths = [group.width for group in pack for _ in group.plans]
    result = run_pass(
        model.weights,
        [pl.element for pl in plans],
        save_forward,
        save_grad,
        needs_backward,
        model.device,
        model.autoencoders.all(),
        widths=widths,
    )
    lists = TokenLists(model.weights, model.excluded_ids, model.tokenizer.decode_token, scores)
    answers: list = []
    first = 0
    for group in pack:
        try:
            answers.append(_answer_group(group, first, result, model, lists.scorer(group.index)))
        except ActqError as error:
            lists.drop(group.index)
            answers.append(error)
        first += len(group.plans)
    refused = lists.fill()
    return [refused.get(g.index, answer) for g, answer in zip(pack, answers, strict=True)]


def _answer_group(group: _Group, first: int, result, model, scorer) -> dict:
    hooks = _group_hooks(result.hooks, group)
    views = [
        ElementView(
            model.weights,
            hooks,
            first + j,
            result.lengths[first + j],
            pl.dst_trace,
            pl.fake_grad_index,
            pl.paths.inference,
            model.autoencoders,
            width=group.width,
        )
        for j, pl in enumerate(group.plans)
    ]
    lists = node_lists(group.plans, views)
    return {
        "inferenceSubResponses": [
            sub_response(pl, view, lists, result, model, first + j, scorer)
            for j, (pl, view) in enumerate(zip(group.plans, views, strict=True))
        ]
    }


def _group_hooks(hooks: Hooks, group: _Group) -> Hooks:
    """The pass's hooks as the group's own pass would have left them: the gradients it saves,
    none if it would have run no backward pass."""
    grads = {k: g for k, g in hooks.grads.items() if k in group.save_grad} if group.backward else {}
    return Hooks(saved=hooks.saved, grads=grads, attached=hooks.attached)


def node_lists(plans: list[SubRequestPlan], views: list[ElementView]) -> dict[str, list[Node]]:
    """Each top-k spec name's node list: the union, in order, over one batch's sub-requests.
    Each sub-request's top-k specs are digested on the way (`digests.digest_top_k`, kept in
    ``plan.top_k``), their dense DSTs freed one by one."""
    lists: dict[str, list[Node]] = {}
    aliases: dict[str, str] = {}
    for plan, view in zip(plans, views, strict=True):
        uses, hints = store_uses(plan), {}
        for name, spec in plan.specs.items():
            if isinstance(spec, p.MultipleTopKDerivedScalarsRequestSpec):
                digest = digest_top_k(plan, view, spec, plan.paths.specs[name], uses, hints)
                plan.top_k[name] = digest
                lists.setdefault(name, []).extend(digest.nodes)
            elif isinstance(spec, p.ScoredTokensRequestSpec | p.TokenPairAttributionRequestSpec):
                aliases[name] = spec.depends_on_spec_name
    out = {name: list(dict.fromkeys(nodes)) for name, nodes in lists.items()}
    for name, target in aliases.items():
        out[name] = out.get(target, [])
    return out

"""The batched request pipeline (protocol.md §5): plan, one pass, rank, respond.

Single-spec routes are the one-element case of a batch. For each sub-request the specs are
planned in key order (which DSTs, which configuration), the whole batch runs through one forward
and at most one backward pass, top-k node lists are unioned per spec name across the batch, and
each sub-request answers every spec from its own values over the shared node list.
"""

from __future__ import annotations

from models.wire import protocol as p

from .inference import run_pass
from .planning import Paths, SubRequestPlan, group_stores, plan_sub_request, requirements
from .responses import sub_response
from .tokens import TokenScorer
from .topk import Node, rank_spec
from .view import ElementView


def run_batch(subs: list[p.InferenceSubRequest], model, paths: list[Paths] | None = None) -> dict:
    """Answer a batch of inference sub-requests as a BatchedResponse (wire dict)."""
    if paths is None:
        paths = [
            Paths.batched(i, sub.processing_request_spec_by_name) for i, sub in enumerate(subs)
        ]
    plans = [plan_sub_request(sub, path, model) for sub, path in zip(subs, paths, strict=True)]
    save_forward, save_grad, needs_backward = requirements(plans, model)
    result = run_pass(
        model.weights,
        [pl.element for pl in plans],
        save_forward,
        save_grad,
        needs_backward,
        model.device,
        model.autoencoders.all(),
    )
    views = [
        ElementView(
            model.weights,
            result.hooks,
            row,
            result.lengths[row],
            pl.dst_trace,
            pl.fake_grad_index,
            pl.paths.inference,
            model.autoencoders,
        )
        for row, pl in enumerate(plans)
    ]
    node_lists = _node_lists(plans, views)
    scorer = TokenScorer(model.weights, model.excluded_ids, model.tokenizer.decode_token)
    responses = [
        sub_response(pl, view, node_lists, result, model, i, scorer)
        for i, (pl, view) in enumerate(zip(plans, views, strict=True))
    ]
    return {"inferenceSubResponses": responses}


def _node_lists(plans: list[SubRequestPlan], views: list[ElementView]) -> dict[str, list[Node]]:
    lists: dict[str, list[Node]] = {}
    aliases: dict[str, str] = {}
    for plan, view in zip(plans, views, strict=True):
        for name, spec in plan.specs.items():
            if isinstance(spec, p.MultipleTopKDerivedScalarsRequestSpec):
                stores = group_stores(plan, view, spec, plan.paths.specs[name])
                lists.setdefault(name, []).extend(
                    rank_spec(stores, spec.top_and_bottom_k, spec.token_index)
                )
            elif isinstance(spec, p.ScoredTokensRequestSpec | p.TokenPairAttributionRequestSpec):
                aliases[name] = spec.depends_on_spec_name
    out = {name: list(dict.fromkeys(nodes)) for name, nodes in lists.items()}
    for name, target in aliases.items():
        out[name] = out.get(target, [])
    return out

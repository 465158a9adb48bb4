"""The batched request pipeline (protocol.md §5): plan, one pass, rank, respond.

Single-spec routes are the one-element case of a batch. For each sub-request the specs are
planned in key order (which DSTs, which configuration), the whole batch runs through one forward
and at most one backward pass, top-k node lists are unioned per spec name across the batch, and
each sub-request answers every spec from its own values over the shared node list.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field

import torch

from models import protocol as p
from models.errors import RequestValidationError
from models.indexing import DST_INFO, DerivedScalarType

from .attention_scalars import token_attention_scalars
from .derived import DstDef, ElementView, dst_def
from .hooks import HOOK_POINTS
from .inference import Ablation, ElementPlan, PassResult, run_pass
from .losses import LossSpec
from .tokens import token_read_scores, token_write_scores, top_tokens
from .topk import DstTensors, Node, group_values, intermediate_sum, rank_spec, tensor_nd
from .tracing import TracedNode

MLP_SCORED = {"input_tokens_that_upvote_mlp": {"mlp_neuron"}}
TOKEN_WRITE_POINTS = ("mlp.post_act", "attn.qk_probs", "attn.v", "resid.post_emb")
TOKEN_READ_POINTS = ("resid.post_attn",)


@dataclass
class SubRequestPlan:
    """One sub-request made concrete: tokens, pass plan and its specs."""

    tokens: list[int]
    element: ElementPlan
    specs: dict[str, object]
    fake_grad_index: Ablation | None
    stores: dict[tuple[str, bool], DstTensors] = field(default_factory=dict)


def _str(x) -> str:
    return getattr(x, "value", x)


def _groups_of(spec) -> dict[str, list[str]]:
    if isinstance(spec, p.MultipleTopKDerivedScalarsRequestSpec):
        return {_str(g): [_str(d) for d in dsts] for g, dsts in spec.dst_list_by_group_id.items()}
    if isinstance(spec, p.DerivedScalarsRequestSpec | p.DerivedAttentionScalarsRequestSpec):
        return {"singleton": [_str(spec.dst)]}
    return {}


def _derives_gradients(spec) -> bool:
    return _str(getattr(spec, "pass_type", "forward")) == "backward"


def plan_sub_request(sub: p.InferenceSubRequest, index: int, model) -> SubRequestPlan:
    spec_in = sub.inference_request_spec
    base = f"inferenceSubRequests.{index}.inferenceRequestSpec"
    tokens = model.tokenizer.encode(spec_in.prompt)
    if not 0 < len(tokens) <= model.meta.n_ctx:
        raise RequestValidationError(
            f"the prompt has {len(tokens)} tokens; this model takes 1 to {model.meta.n_ctx}", f"{base}.prompt")
    ablations = [
        Ablation(
            location=_str(a.index.activation_location_type),
            layer=a.index.layer_index,
            indices=tuple(a.index.tensor_indices),
            backward=_str(a.index.pass_type) == "backward",
            value=float(a.value),
        )
        for a in spec_in.ablation_specs or ()
    ]
    loss = None
    if spec_in.loss_fn_config is not None:
        cfg = spec_in.loss_fn_config
        lpath = f"{base}.lossFnConfig"
        loss = LossSpec(
            name=_str(cfg.name),
            targets=tuple(model.tokenizer.single_token_id(s, f"{lpath}.targetTokens.{i}")
                          for i, s in enumerate(cfg.target_tokens or ())),
            distractors=tuple(model.tokenizer.single_token_id(s, f"{lpath}.distractorTokens.{i}")
                              for i, s in enumerate(cfg.distractor_tokens or ())),
        )
    trace = TracedNode.from_config(spec_in.trace_config) if spec_in.trace_config is not None else None
    element = ElementPlan(tokens=tokens, ablations=ablations, loss=loss, trace=trace)
    fake = ablations[0] if len(ablations) == 1 else None
    return SubRequestPlan(tokens, element, dict(sub.processing_request_spec_by_name), fake)


def _all_layers(points, n_layers: int) -> set:
    keys = set()
    for name in points:
        keys.update([(name, layer) for layer in range(n_layers)] if HOOK_POINTS[name][1] else [(name, None)])
    return keys


def _requirements(plans: list[SubRequestPlan], model) -> tuple[set, set, bool]:
    """The hook points to save (forward values, gradients) and whether a backward pass is needed."""
    n_layers = model.weights.n_layers
    save_forward, save_grad = set(), set()
    needs_backward = False
    for plan in plans:
        for spec in plan.specs.values():
            if isinstance(spec, p.ScoredTokensRequestSpec):
                save_forward |= _all_layers(TOKEN_WRITE_POINTS + TOKEN_READ_POINTS, n_layers)
            derive = _derives_gradients(spec)
            for dsts in _groups_of(spec).values():
                for dst in dsts:
                    d = dst_def(dst)
                    save_forward |= _all_layers(d.points, n_layers)
                    grads = d.grad_points + (d.backward_grad_points if derive else ())
                    save_grad |= _all_layers(grads, n_layers)
                    if d.direction:
                        trace = plan.element.trace
                        save_grad.add(trace.residual_key if trace else ("resid.post_mlp", n_layers - 1))
                    needs_backward = needs_backward or bool(grads) or d.direction
    return save_forward, save_grad, needs_backward


def _store(plan: SubRequestPlan, view: ElementView, dst: str, derive: bool, path: str | None) -> DstTensors:
    key = (dst, derive)
    if key not in plan.stores:
        d: DstDef = dst_def(dst, path)
        if derive and d.backward is None:
            raise RequestValidationError(
                f"{dst} has no backward (gradient) values; use passType forward", path)
        info = DST_INFO[DerivedScalarType(dst)]
        layers = list(range(view.weights.n_layers)) if d.layered else [None]
        forward = {layer: d.forward(view, layer) for layer in layers}
        backward = {layer: d.backward(view, layer) for layer in layers} if derive else None
        plan.stores[key] = DstTensors(dst, _str(info.node_type), forward, backward)
    return plan.stores[key]


def _groups(plan, view, spec, path) -> dict[str, list[DstTensors]]:
    derive = _derives_gradients(spec)
    return {g: [_store(plan, view, d, derive, path) for d in dsts] for g, dsts in _groups_of(spec).items()}


def node_json(node: Node) -> dict:
    node_type, indices, layer, pass_type = node
    return {"nodeType": node_type, "tensorIndices": list(indices), "layerIndex": layer, "passType": pass_type}


def run_batch(subs: list[p.InferenceSubRequest], model, paths: list[str] | None = None) -> dict:
    plans = [plan_sub_request(sub, i, model) for i, sub in enumerate(subs)]
    save_forward, save_grad, needs_backward = _requirements(plans, model)
    result = run_pass(model.weights, [pl.element for pl in plans], save_forward, save_grad,
                      needs_backward, model.device)
    views = [
        ElementView(model.weights, result.hooks, row, result.lengths[row], pl.element.trace, pl.fake_grad_index)
        for row, pl in enumerate(plans)
    ]
    node_lists = _node_lists(plans, views)
    responses = [_sub_response(pl, view, node_lists, result, model, i)
                 for i, (pl, view) in enumerate(zip(plans, views, strict=True))]
    return {"inferenceSubResponses": responses}


def _node_lists(plans: list[SubRequestPlan], views: list[ElementView]) -> dict[str, list[Node]]:
    lists: dict[str, list[Node]] = {}
    aliases: dict[str, str] = {}
    for i, (plan, view) in enumerate(zip(plans, views, strict=True)):
        for name, spec in plan.specs.items():
            path = f"inferenceSubRequests.{i}.processingRequestSpecByName.{name}"
            if isinstance(spec, p.MultipleTopKDerivedScalarsRequestSpec):
                groups = _groups(plan, view, spec, path)
                lists.setdefault(name, []).extend(rank_spec(groups, spec.top_and_bottom_k, spec.token_index))
            elif isinstance(spec, p.ScoredTokensRequestSpec | p.TokenPairAttributionRequestSpec):
                aliases[name] = spec.depends_on_spec_name
    out = {name: list(dict.fromkeys(nodes)) for name, nodes in lists.items()}
    for name, target in aliases.items():
        out[name] = out.get(target, [])
    return out


def _sub_response(plan, view, node_lists, result: PassResult, model, index: int) -> dict:
    data = {}
    for name, spec in plan.specs.items():
        path = f"inferenceSubRequests.{index}.processingRequestSpecByName.{name}"
        data[name] = _spec_response(plan, view, spec, node_lists.get(name, []), model, path)
    return {
        "inferenceResponse": {"inferenceAndTokenData": _token_data(plan, result, model, index)},
        "processingResponseDataByName": data,
    }


def _token_data(plan, result: PassResult, model, row: int) -> dict:
    memory_after = None
    if result.device.type == "cuda":
        gc.collect()
        memory_after = float(torch.cuda.memory_allocated(result.device))
    return {
        "inferenceTime": result.inference_time,
        "memoryUsedBefore": result.memory_before,
        "memoryUsedAfter": memory_after,
        "log": None,
        "loss": result.losses[row],
        "activationValueForBackwardPass": result.traced_values[row],
        "tokensAsInts": plan.tokens,
        "tokensAsStrings": model.tokenizer.decode_tokens(plan.tokens),
    }


def _spec_response(plan, view, spec, nodes, model, path) -> dict:
    if isinstance(spec, p.MultipleTopKDerivedScalarsRequestSpec):
        return _multiple_top_k(plan, view, spec, nodes, model, path)
    if isinstance(spec, p.DerivedScalarsRequestSpec):
        return _derived_scalars(plan, view, spec, model, path)
    if isinstance(spec, p.DerivedAttentionScalarsRequestSpec):
        return _derived_attention_scalars(plan, view, spec, model, path)
    if isinstance(spec, p.ScoredTokensRequestSpec):
        return _scored_tokens(view, spec, nodes, model, path)
    return {
        "responseDataType": "token_pair_attribution_response_data",
        "nodeIndices": [node_json(n) for n in nodes],
        "topTokensAttendedToList": [None] * len(nodes),
    }


def _multiple_top_k(plan, view, spec, nodes, model, path) -> dict:
    groups = _groups(plan, view, spec, path)
    activations = {}
    for gid, dsts in groups.items():
        values = group_values(dsts, nodes)
        if not all(math.isfinite(v) for v in values):
            raise RequestValidationError(
                f"group {gid} has non-finite values (e.g. masked attention logits); they cannot be ranked",
                f"{path}.dstListByGroupId.{gid}")
        activations[gid] = values
    keep = {_str(d) for d in spec.dimensions_to_keep_for_intermediate_sum}
    sums = {}
    for gid, dsts in groups.items():
        sums[gid] = {}
        for dst in dsts:
            dims = DST_INFO[DerivedScalarType(dst.name)].dims
            kept = [axis for axis, dim in enumerate(dims) if _str(dim) in keep]
            total = intermediate_sum(dst, kept, _derives_gradients(spec))
            sums[gid][dst.name] = tensor_nd(total)
    vocab = [
        model.tokenizer.decode_token(n[1][-1])
        if n[0] == "vocab_token" and n[1][-1] is not None and n[1][-1] < model.meta.vocab_size else None
        for n in nodes
    ]
    return {
        "responseDataType": "multiple_top_k_derived_scalars_response_data",
        "activationsByGroupId": activations,
        "nodeIndices": [node_json(n) for n in nodes],
        "vocabTokenStringsForIndices": vocab if any(v is not None for v in vocab) else None,
        "intermediateSumActivationsByDstByGroupId": sums,
    }


def _derived_scalars(plan, view, spec, model, path) -> dict:
    dst = _str(spec.dst)
    derive = _derives_gradients(spec)
    store = _store(plan, view, dst, derive, path)
    tensors = store.backward if derive else store.forward
    layer = spec.layer_index
    if layer not in tensors:
        raise RequestValidationError(f"layer {layer} is not a layer of {dst}", f"{path}.layerIndex")
    tensor = tensors[layer]
    if tensor.dim() != 2:
        raise RequestValidationError(f"{dst} has {tensor.dim()} axes; derived scalars need 2", f"{path}.dst")
    activations = tensor[:, spec.activation_index].tolist()
    pass_type = _str(spec.pass_type)
    nodes = [(store.node_type, (t, spec.activation_index), layer, pass_type) for t in range(len(activations))]
    top = None
    if spec.num_top_tokens is not None:
        top = _derived_scalar_top_tokens(view, store, spec, activations, model, path)
    return {
        "responseDataType": "derived_scalars_response_data",
        "activations": activations,
        "normalizedActivations": None,
        "nodeIndices": [node_json(n) for n in nodes],
        "topTokens": top,
    }


def _derived_scalar_top_tokens(view, store, spec, activations, model, path):
    excluded = model.excluded_ids
    if store.name == "vocab_token_write_to_input_direction":
        scores = store.forward[None][:1]
        if not bool(scores.any()):
            return None
        return top_tokens(scores, spec.num_top_tokens, excluded, model.tokenizer.decode_token)[0]
    if store.name != "mlp_post_act":
        raise RequestValidationError(
            f"numTopTokens needs dst mlp_post_act (the token-write input of its node type), not {store.name}",
            f"{path}.numTopTokens")
    if activations[0] == 0:
        return None
    node = (store.node_type, (0, spec.activation_index), spec.layer_index, "forward")
    scores = token_write_scores(view, [node], path)
    return top_tokens(scores, spec.num_top_tokens, excluded, model.tokenizer.decode_token,
                      flip=[activations[0] < 0])[0]


def _derived_attention_scalars(plan, view, spec, model, path) -> dict:
    dst = _str(spec.dst)
    if dst != "unflattened_attn_write_norm":
        raise RequestValidationError(
            "derived attention scalars are defined for dst unflattened_attn_write_norm only", f"{path}.dst")
    store = _store(plan, view, dst, False, path)
    matrix = store.forward[spec.layer_index][:, :, spec.activation_index].tolist()
    tokens = model.tokenizer.decode_tokens(plan.tokens)
    return {
        "responseDataType": "derived_attention_scalars_response_data",
        "tokenAndAttentionScalarsList": token_attention_scalars(matrix, tokens),
    }


def _scored_tokens(view, spec, nodes, model, path) -> dict:
    scoring = _str(spec.token_scoring_type)
    if scoring == "upvoted_output_tokens":
        scored = list(range(len(nodes)))
    elif scoring == "input_tokens_that_upvote_mlp":
        scored = [i for i, n in enumerate(nodes) if n[0] == "mlp_neuron"]
    else:
        scored = []
    entries: list = [None] * len(nodes)
    if scored:
        chosen = [nodes[i] for i in scored]
        if scoring == "upvoted_output_tokens":
            scores = token_write_scores(view, chosen, path)
        else:
            scores = token_read_scores(view, chosen)
        lists = top_tokens(scores, spec.num_tokens, model.excluded_ids, model.tokenizer.decode_token)
        for i, tt in zip(scored, lists, strict=True):
            entries[i] = tt
    return {
        "responseDataType": "scored_tokens_response_data",
        "nodeIndices": [node_json(n) for n in nodes],
        "topTokensList": entries,
    }

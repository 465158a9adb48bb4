"""Wire-form response data for each kind of processing spec (protocol.md §5.5-§5.11), built from
one sub-request's stores and the batch-wide node list of the spec's name."""

from __future__ import annotations

import gc
import math

import torch

from models.errors import RequestValidationError
from models.wire import protocol as p

from .attention_scalars import token_attention_scalars
from .autoencoders.token_scoring import LATENT_NODE_TYPES, reads_tokens, token_pair_attributions
from .digests import digest_top_k
from .inference import PassResult
from .planning import derives_gradients, dst_store, str_value
from .stopping import check_stop
from .token_lists import TokenScorer
from .tokens import read_projections, write_projection
from .topk import Node, group_values, tensor_nd


def node_json(node: Node) -> dict:
    node_type, indices, layer, pass_type = node
    return {
        "nodeType": node_type,
        "tensorIndices": list(indices),
        "layerIndex": layer,
        "passType": pass_type,
    }


def sub_response(
    plan, view, node_lists, result: PassResult, model, index: int, scorer: TokenScorer
) -> dict:
    data = {}
    for name, spec in plan.specs.items():
        check_stop()  # between processing specs (worker.engine.stopping)
        path = plan.paths.specs[name]
        data[name] = _spec_response(
            plan, view, name, spec, node_lists.get(name, []), model, scorer, path
        )
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


def _spec_response(plan, view, name, spec, nodes, model, scorer, path) -> dict:
    if isinstance(spec, p.MultipleTopKDerivedScalarsRequestSpec):
        return _multiple_top_k(plan, view, spec, name, nodes, model, path)
    if isinstance(spec, p.DerivedScalarsRequestSpec):
        return _derived_scalars(plan, view, spec, scorer, path)
    if isinstance(spec, p.DerivedAttentionScalarsRequestSpec):
        return _derived_attention_scalars(plan, view, spec, model, path)
    if isinstance(spec, p.ScoredTokensRequestSpec):
        return _scored_tokens(view, spec, nodes, scorer, path)
    return {
        "responseDataType": "token_pair_attribution_response_data",
        "nodeIndices": [node_json(n) for n in nodes],
        "topTokensAttendedToList": token_pair_attributions(
            view, nodes, spec.num_tokens_attended_to
        ),
    }


def _multiple_top_k(plan, view, spec, name, nodes, model, path) -> dict:
    digest = plan.top_k.get(name)
    if digest is None:  # not ranked with its batch (node_lists does it): digest it now
        digest = plan.top_k[name] = digest_top_k(plan, view, spec, path)
    activations = {}
    for gid, dsts in digest.groups.items():
        try:
            values = group_values(dsts, nodes)
        except (
            ValueError
        ) as error:  # another sub-request of the batch gave this spec name other node types
            raise RequestValidationError(
                f"group {gid} cannot give values for the batch's node list ({error}); sub-requests "
                "sharing a spec name must rank the same node types",
                f"{path}.dstListByGroupId.{gid}",
            ) from None
        if not all(math.isfinite(v) for v in values):
            raise RequestValidationError(
                f"group {gid} has non-finite values (e.g. masked attention logits); they cannot be ranked",
                f"{path}.dstListByGroupId.{gid}",
            )
        activations[gid] = values
    sums = {}
    for gid, totals in digest.sums.items():
        sums[gid] = {}
        for dst_name, total in totals.items():
            try:
                sums[gid][dst_name] = tensor_nd(total)
            except ValueError as error:
                raise RequestValidationError(
                    f"the intermediate sum of {dst_name} cannot be written: {error}",
                    f"{path}.dimensionsToKeepForIntermediateSum",
                ) from None
    vocab = [
        model.tokenizer.decode_token(n[1][-1])
        if n[0] == "vocab_token" and n[1][-1] is not None and n[1][-1] < model.meta.vocab_size
        else None
        for n in nodes
    ]
    return {
        "responseDataType": "multiple_top_k_derived_scalars_response_data",
        "activationsByGroupId": activations,
        "nodeIndices": [node_json(n) for n in nodes],
        "vocabTokenStringsForIndices": vocab if any(v is not None for v in vocab) else None,
        "intermediateSumActivationsByDstByGroupId": sums,
    }


def _derived_scalars(plan, view, spec, scorer, path) -> dict:
    dst = str_value(spec.dst)
    derive = derives_gradients(spec)
    store = dst_store(plan, view, dst, derive, path)
    tensors = store.backward if derive else store.forward
    layer = spec.layer_index
    if layer not in tensors:
        raise RequestValidationError(f"layer {layer} is not a layer of {dst}", f"{path}.layerIndex")
    tensor = tensors[layer]
    if tensor.dim() != 2:
        raise RequestValidationError(
            f"{dst} has {tensor.dim()} axes; derived scalars need 2", f"{path}.dst"
        )
    activations = tensor[:, spec.activation_index].tolist()
    pass_type = str_value(spec.pass_type)
    nodes = [
        (store.node_type, (t, spec.activation_index), layer, pass_type)
        for t in range(len(activations))
    ]
    top = None
    if spec.num_top_tokens is not None:
        top = _derived_scalar_top_tokens(view, store, spec, activations, scorer, path)
    return {
        "responseDataType": "derived_scalars_response_data",
        "activations": activations,
        "normalizedActivations": None,
        "nodeIndices": [node_json(n) for n in nodes],
        "topTokens": top,
    }


def _derived_scalar_top_tokens(view, store, spec, activations, scorer: TokenScorer, path):
    if store.name == "vocab_token_write_to_input_direction":
        scores = store.forward[None][0]
        if not bool(scores.any()):
            return None
        return scorer.top_tokens_of_scores(scores, spec.num_top_tokens)
    if store.name != "mlp_post_act" and store.node_type not in LATENT_NODE_TYPES:
        raise RequestValidationError(
            f"numTopTokens needs dst mlp_post_act (the token-write input of its node type), not {store.name}",
            f"{path}.numTopTokens",
        )
    if activations[0] == 0:
        return None
    node = (store.node_type, (0, spec.activation_index), spec.layer_index, "forward")
    projection = write_projection(view, node, path)
    return scorer.top_tokens([projection], "write", spec.num_top_tokens, flip=[activations[0] < 0])[
        0
    ]


def _derived_attention_scalars(plan, view, spec, model, path) -> dict:
    dst = str_value(spec.dst)
    if dst != "unflattened_attn_write_norm":
        raise RequestValidationError(
            "derived attention scalars are defined for dst unflattened_attn_write_norm only",
            f"{path}.dst",
        )
    store = dst_store(plan, view, dst, False, path)
    matrix = store.forward[spec.layer_index][:, :, spec.activation_index].tolist()
    tokens = model.tokenizer.decode_tokens(plan.tokens)
    return {
        "responseDataType": "derived_attention_scalars_response_data",
        "tokenAndAttentionScalarsList": token_attention_scalars(matrix, tokens),
    }


def _scored_tokens(view, spec, nodes, scorer: TokenScorer, path) -> dict:
    scoring = str_value(spec.token_scoring_type)
    entries: list = [None] * len(nodes)
    if scoring == "upvoted_output_tokens":
        scored = list(range(len(nodes)))
        projections = [write_projection(view, node, path) for node in nodes]
        kind = "write"
    elif scoring == "input_tokens_that_upvote_mlp":
        scored = [i for i, n in enumerate(nodes) if reads_tokens(view, n[0])]
        projections = read_projections(view, [nodes[i] for i in scored])
        kind = "read"
    else:  # the attention query/key readings are disabled in TDB: every entry is null
        scored, projections, kind = [], [], "read"
    if projections:
        lists = scorer.top_tokens(projections, kind, spec.num_tokens)
        for i, top in zip(scored, lists, strict=True):
            entries[i] = top
    return {
        "responseDataType": "scored_tokens_response_data",
        "nodeIndices": [node_json(n) for n in nodes],
        "topTokensList": entries,
    }

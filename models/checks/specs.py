"""The checks of ``models.checks`` for processing specs, and the gradient requirement.

Each check names the offending field by its wire path; the status-code policy is described in
``models.checks``. The rules come from protocol.md §3.5-§3.9, §5.3-§5.10 and §7, and from the
derived-scalar tables of engine.md §3.
"""

from __future__ import annotations

from collections.abc import Iterable

from models.checks.autoencoders import (
    OFFLINE_LATENT_DSTS,
    ONLINE_LATENT_DSTS,
    check_ae_dst_use,
    check_latent,
    dst_autoencoder,
    served,
)
from models.checks.inference import Shape, check_index, check_layer
from models.errors import RequestValidationError, UnsupportedError
from models.wire.enums import ActivationLocationType, DerivedScalarType, Dimension, PassType
from models.wire.protocol import (
    DerivedAttentionScalarsRequestSpec,
    DerivedScalarsRequestSpec,
    InferenceRequestSpec,
    MultipleTopKDerivedScalarsRequestSpec,
    ScoredTokensRequestSpec,
    TokenPairAttributionRequestSpec,
    WireModel,
)
from models.wire.shapes import DST_INFO, DstInfo

DST = DerivedScalarType

# Edge-attribution DSTs need a node to attribute to, which no wire request can give (engine.md §3.9).
_NEEDS_ATTRIBUTION_NODE = frozenset(
    {
        DST.SINGLE_NODE_WRITE,
        DST.SINGLE_NODE_WRITE_TO_FINAL_RESIDUAL_GRAD,
        DST.GRAD_OF_SINGLE_SUBNODE_ATTRIBUTION,
        DST.ATTN_OUT_EDGE_ATTRIBUTION,
        DST.MLP_OUT_EDGE_ATTRIBUTION,
        DST.TOKEN_OUT_EDGE_ATTRIBUTION,
        DST.ATTN_QUERY_IN_EDGE_ATTRIBUTION,
        DST.ATTN_KEY_IN_EDGE_ATTRIBUTION,
        DST.ATTN_VALUE_IN_EDGE_ATTRIBUTION,
        DST.MLP_IN_EDGE_ATTRIBUTION,
        DST.ATTN_QUERY_IN_EDGE_ACTIVATION,
        DST.ATTN_KEY_IN_EDGE_ACTIVATION,
        DST.MLP_IN_EDGE_ACTIVATION,
    }
)

# DSTs whose top tokens a derived-scalars spec can compute: the token write of an MLP neuron needs
# mlp_post_act in the store, and the input-direction DST is its own token vector (§5.6 item 5).
_TOP_TOKEN_DSTS = frozenset({DST.MLP_POST_ACT, DST.VOCAB_TOKEN_WRITE_TO_INPUT_DIRECTION})

_GRADIENTS_MESSAGE = (
    "loss_fn_for_backward_pass or trace_config must be defined if gradients are required"
)


def check_spec(
    spec: WireModel,
    path: str,
    earlier: dict[str, WireModel],
    inference: InferenceRequestSpec,
    shape: Shape,
) -> None:
    """One processing spec; ``earlier`` holds the specs listed before it in its sub-request."""
    if isinstance(spec, DerivedScalarsRequestSpec):
        check_derived_scalars(spec, path, inference, shape)
    elif isinstance(spec, DerivedAttentionScalarsRequestSpec):
        check_derived_attention_scalars(spec, path, shape)
    elif isinstance(spec, MultipleTopKDerivedScalarsRequestSpec):
        check_multiple_top_k(spec, path, inference, shape)
    elif isinstance(spec, ScoredTokensRequestSpec):
        check_depends_on(spec.depends_on_spec_name, earlier, path)
        check_count(spec.num_tokens, shape.usable_vocab_size, f"{path}.numTokens")
    elif isinstance(spec, TokenPairAttributionRequestSpec):
        check_depends_on(spec.depends_on_spec_name, earlier, path)
        check_count(spec.num_tokens_attended_to, None, f"{path}.numTokensAttendedTo")
        attention = served(shape).attention
        if attention is not None and spec.num_tokens_attended_to > shape.n_tokens:
            raise RequestValidationError(
                f"numTokensAttendedTo {spec.num_tokens_attended_to} is more than the prompt's "
                f"{shape.n_tokens} tokens (TDB fails on it with an attention autoencoder loaded)",
                path=f"{path}.numTokensAttendedTo",
            )


def usable_dst(dst: DerivedScalarType, path: str, shape: Shape | None = None) -> DstInfo:
    info = DST_INFO[dst]
    absent = getattr(shape.meta, "absent_dsts", ()) if shape is not None else ()
    if dst.value in absent:
        raise RequestValidationError(
            f"{dst.value} does not exist on {shape.meta.name} (a {shape.meta.family} model with "
            "parallel attention and MLP has no residual between them)",
            path=path,
        )
    if info.autoencoder:
        dst_autoencoder(dst, path, shape)
        return info
    if dst in _NEEDS_ATTRIBUTION_NODE:
        raise UnsupportedError(
            f"{dst.value} needs a node to attribute to, which no request can name", path=path
        )
    return info


def check_count(value: int, maximum: int | None, path: str) -> None:
    if value < 1:
        raise RequestValidationError(f"must be at least 1 (got {value})", path=path)
    if maximum is not None and value > maximum:
        raise RequestValidationError(
            f"must be at most {maximum}, the number of vocabulary tokens a top-token list can show "
            f"(got {value})",
            path=path,
        )


def check_dst_layer(
    dst: DerivedScalarType, layer_index: int | None, path: str, shape: Shape
) -> None:
    """``layerIndex`` is null exactly for the DSTs that exist once per model."""
    if DST_INFO[dst].has_no_layers:
        if layer_index is not None:
            raise RequestValidationError(
                f"{dst.value} is not computed per layer: layerIndex must be null", path=path
            )
        return
    if layer_index is None:
        raise RequestValidationError(
            f"{dst.value} is computed per layer: give a layerIndex", path=path
        )
    check_layer(layer_index, shape, path)


def check_backward(dst: DerivedScalarType, pass_type: PassType, path: str) -> None:
    if pass_type is PassType.BACKWARD and not DST_INFO[dst].supports_backward:
        raise RequestValidationError(
            f"{dst.value} has no backward (gradient) values: passType must be forward", path=path
        )


def check_derived_scalars(
    spec: DerivedScalarsRequestSpec, path: str, inference: InferenceRequestSpec, shape: Shape
) -> None:
    info = usable_dst(spec.dst, f"{path}.dst", shape)
    if len(info.dims) != 2:
        hint = ""
        if spec.dst is DST.UNFLATTENED_ATTN_WRITE_NORM:
            hint = (
                "; for derived attention scalars in a batch give specType "
                '"derived_attention_scalars_request_spec"'
            )
        raise RequestValidationError(
            f"derived scalars read one value per token, so the DST must have 2 axes; "
            f"{spec.dst.value} has {len(info.dims)} ({', '.join(d.value for d in info.dims)}){hint}",
            path=f"{path}.dst",
        )
    check_dst_layer(spec.dst, spec.layer_index, f"{path}.layerIndex", shape)
    check_index(spec.activation_index, info.dims[1], shape, f"{path}.activationIndex")
    check_backward(spec.dst, spec.pass_type, f"{path}.passType")
    if info.autoencoder:
        ae = check_ae_dst_use(
            spec.dst,
            spec.layer_index,
            f"{path}.layerIndex",
            spec.pass_type,
            f"{path}.passType",
            inference,
            f"{path}.dst",
            shape,
        )
        if info.dims[1] is Dimension.AUTOENCODER_LATENTS:
            check_latent(ae, spec.activation_index, f"{path}.activationIndex")
    if spec.num_top_tokens is not None:
        check_count(spec.num_top_tokens, shape.usable_vocab_size, f"{path}.numTopTokens")
        if spec.dst in OFFLINE_LATENT_DSTS:
            raise RequestValidationError(
                f"top tokens of offline latents ({spec.dst.value}) fail in TDB; use the online_ "
                "latents: numTopTokens must be null",
                path=f"{path}.numTopTokens",
            )
        if spec.dst not in _TOP_TOKEN_DSTS and spec.dst not in ONLINE_LATENT_DSTS:
            raise RequestValidationError(
                "top tokens are computed only for mlp_post_act and "
                f"vocab_token_write_to_input_direction, not {spec.dst.value}: numTopTokens must be null",
                path=f"{path}.numTopTokens",
            )
    check_neuron_record(spec.normalize_activations_using_neuron_record, path, NEURON_RECORD_DSTS)
    if spec.dst is DST.VOCAB_TOKEN_WRITE_TO_INPUT_DIRECTION:
        check_input_direction_ablation(inference, f"{path}.dst", shape)


NEURON_RECORD_DSTS = ("mlp_post_act", "mlp_autoencoder_latent", "autoencoder_latent")


def check_derived_attention_scalars(
    spec: DerivedAttentionScalarsRequestSpec, path: str, shape: Shape
) -> None:
    usable_dst(spec.dst, f"{path}.dst", shape)
    if spec.dst is not DST.UNFLATTENED_ATTN_WRITE_NORM:
        raise RequestValidationError(
            f"derived attention scalars are computed for unflattened_attn_write_norm only, "
            f"not {spec.dst.value}",
            path=f"{path}.dst",
        )
    check_dst_layer(spec.dst, spec.layer_index, f"{path}.layerIndex", shape)
    check_index(spec.activation_index, Dimension.ATTN_HEADS, shape, f"{path}.activationIndex")
    check_neuron_record(spec.normalize_activations_using_neuron_record, path, ("attn_write_norm",))


def check_neuron_record(record, path: str, record_dsts: tuple[str, ...]) -> None:
    """``normalizeActivationsUsingNeuronRecord`` names a node of a kind records are kept for and
    at least one dataset; whether the record exists is the store's to say (a 404 at submission)."""
    if record is None:
        return
    path = f"{path}.normalizeActivationsUsingNeuronRecord"
    if record.dst.value not in record_dsts:
        raise RequestValidationError(
            f"records of {record.dst.value} are not kept here; expected one of {list(record_dsts)}",
            path=f"{path}.dst",
        )
    if not record.datasets:
        raise RequestValidationError("name at least one dataset", path=f"{path}.datasets")


def check_multiple_top_k(
    spec: MultipleTopKDerivedScalarsRequestSpec,
    path: str,
    inference: InferenceRequestSpec,
    shape: Shape,
) -> None:
    groups = spec.dst_list_by_group_id
    if not groups:
        raise RequestValidationError("give at least one group", path=f"{path}.dstListByGroupId")
    first: tuple[str, list] | None = None
    for group_id, dsts in groups.items():
        group_path = f"{path}.dstListByGroupId.{group_id.value}"
        node_types = check_group(dsts, group_path, spec, path, inference, shape)
        if first is None:
            first = (group_id.value, node_types)
        elif node_types != first[1]:
            raise RequestValidationError(
                f"node types {[t.value for t in node_types]} differ from those of group "
                f"{first[0]} {[t.value for t in first[1]]}: every group must list DSTs of the "
                "same node types in the same order",
                path=group_path,
            )
    if spec.top_and_bottom_k is not None:
        check_count(spec.top_and_bottom_k, None, f"{path}.topAndBottomK")
    if spec.token_index is not None:
        check_index(spec.token_index, Dimension.SEQUENCE_TOKENS, shape, f"{path}.tokenIndex")


def check_group(
    dsts: list[DerivedScalarType],
    group_path: str,
    spec: MultipleTopKDerivedScalarsRequestSpec,
    path: str,
    inference: InferenceRequestSpec,
    shape: Shape,
) -> list:
    """One group's DSTs; returns their node types in order."""
    if not dsts:
        raise RequestValidationError("a group needs at least one DST", path=group_path)
    node_types = []
    for k, dst in enumerate(dsts):
        info = usable_dst(dst, f"{group_path}.{k}", shape)
        if info.autoencoder:
            check_ae_dst_use(
                dst,
                None,
                None,
                spec.pass_type,
                f"{path}.passType",
                inference,
                f"{group_path}.{k}",
                shape,
            )
        if dst in dsts[:k]:
            raise RequestValidationError(
                f"{dst.value} is listed twice in this group", path=f"{group_path}.{k}"
            )
        if info.node_type in node_types:
            raise RequestValidationError(
                f"{dst.value} has node type {info.node_type.value}, like an earlier DST of this "
                "group: a group holds at most one DST per node type",
                path=f"{group_path}.{k}",
            )
        node_types.append(info.node_type)
        check_backward(dst, spec.pass_type, f"{path}.passType")
        kept = [d for d in info.dims if d in spec.dimensions_to_keep_for_intermediate_sum]
        if len(kept) > 3:
            raise RequestValidationError(
                f"the intermediate sum of {dst.value} would keep {len(kept)} axes; at most 3 can be sent",
                path=f"{path}.dimensionsToKeepForIntermediateSum",
            )
        if dst is DST.VOCAB_TOKEN_WRITE_TO_INPUT_DIRECTION:
            if len(dsts) != 1:
                raise RequestValidationError(
                    "vocab_token_write_to_input_direction must be alone in its group",
                    path=f"{group_path}.{k}",
                )
            check_input_direction_ablation(inference, f"{group_path}.{k}", shape)
    return node_types


LATENT_INPUT_LOCATIONS = (
    ActivationLocationType.ONLINE_MLP_AUTOENCODER_LATENT,
    ActivationLocationType.ONLINE_AUTOENCODER_LATENT,
)


def check_input_direction_ablation(
    inference: InferenceRequestSpec, path: str, shape: Shape
) -> None:
    """vocab_token_write_to_input_direction takes its neuron from the request's one ablation."""
    ablations = inference.ablation_specs or []
    if len(ablations) != 1:
        raise RequestValidationError(
            "vocab_token_write_to_input_direction reads its neuron from the request's ablation "
            f"spec, so the request needs exactly one; it has {len(ablations)}",
            path=path,
        )
    index = ablations[0].index
    latent = index.activation_location_type in LATENT_INPUT_LOCATIONS
    if latent and (shape.autoencoders is None or shape.autoencoders.get("mlp") is None):
        raise RequestValidationError(
            "vocab_token_write_to_input_direction at a latent needs an MLP autoencoder loaded",
            path=path,
        )
    if not latent and index.activation_location_type is not ActivationLocationType.MLP_POST_ACT:
        raise RequestValidationError(
            "vocab_token_write_to_input_direction needs its ablation spec at mlp.post_act or an "
            f"MLP autoencoder latent, not {index.activation_location_type.value}",
            path=path,
        )
    if (
        index.layer_index is None
        or len(index.tensor_indices) < 2
        or index.tensor_indices[1] == "All"
    ):
        raise RequestValidationError(
            "vocab_token_write_to_input_direction needs its ablation spec to name one layer and "
            "one neuron (tensorIndices [token, neuron])",
            path=path,
        )


def check_depends_on(name: str, earlier: dict[str, WireModel], path: str) -> None:
    if name not in earlier:
        raise RequestValidationError(
            f"dependsOnSpecName {name!r} must name a spec listed before this one in the same "
            "sub-request",
            path=f"{path}.dependsOnSpecName",
        )


def check_gradients(
    inference: InferenceRequestSpec, path: str, specs: Iterable[tuple[str, WireModel, str]]
) -> None:
    """Specs that need a backward pass need a loss or a trace to start it (protocol.md §5.4)."""
    if inference.loss_fn_config is not None or inference.trace_config is not None:
        return
    for _, spec, spec_path in specs:
        reason = _gradient_reason(spec, spec_path)
        if reason is not None:
            field, why = reason
            raise RequestValidationError(
                f"{_GRADIENTS_MESSAGE}: {why}; give {path}.lossFnConfig or {path}.traceConfig",
                path=field,
            )


def _gradient_reason(spec: WireModel, path: str) -> tuple[str, str] | None:
    """Where and why a spec needs gradients, or None."""
    if isinstance(spec, DerivedScalarsRequestSpec | MultipleTopKDerivedScalarsRequestSpec):
        if spec.pass_type is PassType.BACKWARD:
            return f"{path}.passType", "passType backward asks for gradients"
    if isinstance(spec, DerivedScalarsRequestSpec) and DST_INFO[spec.dst].needs_grad_for_forward:
        return f"{path}.dst", f"{spec.dst.value} is computed from gradients"
    if isinstance(spec, MultipleTopKDerivedScalarsRequestSpec):
        for group_id, dsts in spec.dst_list_by_group_id.items():
            for k, dst in enumerate(dsts):
                if DST_INFO[dst].needs_grad_for_forward:
                    return (
                        f"{path}.dstListByGroupId.{group_id.value}.{k}",
                        f"{dst.value} is computed from gradients",
                    )
    return None

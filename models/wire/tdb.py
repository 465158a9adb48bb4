"""TDB's conversion of a ``TdbRequestSpec`` into an ``InferenceSubRequest`` (protocol.md §6).

TDB's UI sends one ``TdbRequestSpec`` per prompt; the server turns each into an ordinary batched
sub-request: node ablations become ablation specs (followed by the final layer-norm scale ablation
every TDB request gets), the traced nodes become a trace configuration, the target and distractor
tokens become a ``logit_diff`` loss unless tracing drops it, and eight fixed processing specs ask for
the node table and its companions. This is on the parity path, so it follows the spec to the letter;
the API's early validation and the engine both use it.

Conversion checks only what it needs to build the request (the node types an ablation can address,
non-null token and neuron indices, a downstream node only below a ``V`` trace); everything else,
such as ranges, is left to ``models.checks``.
"""

from __future__ import annotations

from models.errors import RequestValidationError
from models.wire.enums import (
    ActivationLocationType,
    AttentionTraceType,
    ComponentTypeForAttention,
    ComponentTypeForMlp,
    DerivedScalarType,
    GroupId,
    LossFnName,
    NodeType,
    PassType,
    PreOrPostAct,
    TokenScoringType,
)
from models.wire.protocol import (
    AblationSpec,
    InferenceRequestSpec,
    InferenceSubRequest,
    LossFnConfig,
    MirroredActivationIndex,
    MirroredTraceConfig,
    MultipleTopKDerivedScalarsRequestSpec,
    NodeAblation,
    NodeToTrace,
    ScoredTokensRequestSpec,
    TdbRequestSpec,
    TokenPairAttributionRequestSpec,
)

DST = DerivedScalarType

# Group -> (embedding DST, MLP DST per component type, attention DST per component type) (§6.5).
_COMPONENT_GROUPS: dict[
    GroupId,
    tuple[DST, dict[ComponentTypeForMlp, DST], dict[ComponentTypeForAttention, DST]],
] = {
    GroupId.WRITE_NORM: (
        DST.RESID_POST_EMBEDDING_NORM,
        {
            ComponentTypeForMlp.NEURON: DST.MLP_WRITE_NORM,
            ComponentTypeForMlp.AUTOENCODER_LATENT: DST.ONLINE_MLP_AUTOENCODER_WRITE_NORM,
        },
        {
            ComponentTypeForAttention.ATTENTION_HEAD: DST.UNFLATTENED_ATTN_WRITE_NORM,
            ComponentTypeForAttention.AUTOENCODER_LATENT: DST.ONLINE_ATTENTION_AUTOENCODER_WRITE_NORM,
        },
    ),
    GroupId.ACT_TIMES_GRAD: (
        DST.TOKEN_ATTRIBUTION,
        {
            ComponentTypeForMlp.NEURON: DST.MLP_ACT_TIMES_GRAD,
            ComponentTypeForMlp.AUTOENCODER_LATENT: DST.ONLINE_MLP_AUTOENCODER_ACT_TIMES_GRAD,
        },
        {
            ComponentTypeForAttention.ATTENTION_HEAD: DST.UNFLATTENED_ATTN_ACT_TIMES_GRAD,
            ComponentTypeForAttention.AUTOENCODER_LATENT: DST.ONLINE_ATTENTION_AUTOENCODER_ACT_TIMES_GRAD,
        },
    ),
    GroupId.DIRECTION_WRITE: (
        DST.RESID_POST_EMBEDDING_PROJ_TO_FINAL_RESIDUAL_GRAD,
        {
            ComponentTypeForMlp.NEURON: DST.MLP_WRITE_TO_FINAL_RESIDUAL_GRAD,
            ComponentTypeForMlp.AUTOENCODER_LATENT: DST.ONLINE_MLP_AUTOENCODER_WRITE_TO_FINAL_RESIDUAL_GRAD,
        },
        {
            ComponentTypeForAttention.ATTENTION_HEAD: DST.UNFLATTENED_ATTN_WRITE_TO_FINAL_RESIDUAL_GRAD,
            ComponentTypeForAttention.AUTOENCODER_LATENT: DST.ONLINE_ATTENTION_AUTOENCODER_WRITE_TO_FINAL_RESIDUAL_GRAD,
        },
    ),
    GroupId.ACTIVATION: (
        DST.ALWAYS_ONE,
        {
            ComponentTypeForMlp.NEURON: DST.MLP_POST_ACT,
            ComponentTypeForMlp.AUTOENCODER_LATENT: DST.ONLINE_MLP_AUTOENCODER_LATENT,
        },
        {
            ComponentTypeForAttention.ATTENTION_HEAD: DST.ATTN_QK_PROBS,
            ComponentTypeForAttention.AUTOENCODER_LATENT: DST.ONLINE_ATTENTION_AUTOENCODER_LATENT,
        },
    ),
}

# Node ablation: node type -> the location it overwrites (§6.1).
_ABLATION_LOCATIONS: dict[NodeType, ActivationLocationType] = {
    NodeType.ATTENTION_HEAD: ActivationLocationType.ATTN_QK_PROBS,
    NodeType.MLP_NEURON: ActivationLocationType.MLP_POST_ACT,
    NodeType.AUTOENCODER_LATENT: ActivationLocationType.ONLINE_AUTOENCODER_LATENT,
    NodeType.MLP_AUTOENCODER_LATENT: ActivationLocationType.ONLINE_MLP_AUTOENCODER_LATENT,
    NodeType.ATTENTION_AUTOENCODER_LATENT: ActivationLocationType.ONLINE_ATTENTION_AUTOENCODER_LATENT,
}

# Every TDB request ends its ablations with this one: the final layer-norm scale acts as a
# constant in the backward pass (§6.1, engine.md §5.4).
LN_F_SCALE_BACKWARD_ABLATION = AblationSpec(
    index=MirroredActivationIndex(
        activation_location_type=ActivationLocationType.RESID_FINAL_LAYER_NORM_SCALE,
        tensor_indices=("All", "All"),
        layer_index=None,
        pass_type=PassType.BACKWARD,
    ),
    value=0.0,
)

SCORED_TOKEN_SPECS: tuple[tuple[str, TokenScoringType], ...] = (
    ("upvotedOutputTokens", TokenScoringType.UPVOTED_OUTPUT_TOKENS),
    ("inputTokensThatUpvoteMlp", TokenScoringType.INPUT_TOKENS_THAT_UPVOTE_MLP),
    ("inputTokensThatUpvoteAttnQ", TokenScoringType.INPUT_TOKENS_THAT_UPVOTE_ATTN_Q),
    ("inputTokensThatUpvoteAttnK", TokenScoringType.INPUT_TOKENS_THAT_UPVOTE_ATTN_K),
)
NODE_TABLE_SPEC_NAME = "topKComponents"


def component_groups(
    mlp: ComponentTypeForMlp, attention: ComponentTypeForAttention
) -> dict[GroupId, list[DerivedScalarType]]:
    """The node-table groups: ``[embedding, MLP, attention]`` DSTs per group, in TDB's order."""
    return {
        group_id: [embedding, mlp_dsts[mlp], attention_dsts[attention]]
        for group_id, (embedding, mlp_dsts, attention_dsts) in _COMPONENT_GROUPS.items()
    }


def ablation_spec_for(ablation: NodeAblation, path: str = "") -> AblationSpec:
    """A node ablation as TDB applies it: forward, at the node's token and last index."""
    node = ablation.node_index
    location = _ABLATION_LOCATIONS.get(node.node_type)
    if location is None:
        raise RequestValidationError(
            f"Unknown node type {node.node_type.value} for an ablation; "
            "only mlp_neuron and attention_head nodes can be ablated",
            path=_join(path, "nodeIndex.nodeType"),
        )
    indices = node.tensor_indices
    if not indices or indices[0] is None or indices[-1] is None:
        raise RequestValidationError(
            "an ablated node needs a token (first) and a neuron or head (last) tensor index",
            path=_join(path, "nodeIndex.tensorIndices"),
        )
    token, last = indices[0], indices[-1]
    tensor_indices = (
        (token, "All", last) if node.node_type is NodeType.ATTENTION_HEAD else (token, last)
    )
    return AblationSpec(
        index=MirroredActivationIndex(
            activation_location_type=location,
            tensor_indices=tensor_indices,
            layer_index=node.layer_index,
            pass_type=PassType.FORWARD,
        ),
        value=ablation.value,
    )


def _trace_level(node: NodeToTrace, downstream: MirroredTraceConfig | None) -> MirroredTraceConfig:
    return MirroredTraceConfig(
        node_index=node.node_index,
        pre_or_post_act=PreOrPostAct.PRE,
        detach_layer_norm_scale=True,
        attention_trace_type=node.attention_trace_type,
        downstream_trace_config=downstream,
    )


def trace_config_for(spec: TdbRequestSpec, path: str = "") -> MirroredTraceConfig | None:
    """The trace configuration of §6.2 (``upstreamNodeToTrace.downstreamTraceConfig`` is ignored)."""
    upstream, downstream = spec.upstream_node_to_trace, spec.downstream_node_to_trace
    if upstream is None:
        if downstream is not None:
            raise RequestValidationError(
                "downstreamNodeToTrace needs an upstreamNodeToTrace",
                path=_join(path, "downstreamNodeToTrace"),
            )
        return None
    if downstream is None:
        return _trace_level(upstream, None)
    if upstream.attention_trace_type is not AttentionTraceType.V:
        raise RequestValidationError(
            "a downstream node can only be traced below an upstream node traced through V",
            path=_join(path, "downstreamNodeToTrace"),
        )
    return _trace_level(upstream, _trace_level(downstream, None))


def keeps_loss(spec: TdbRequestSpec) -> bool:
    """Whether the request's logit_diff loss survives tracing (§6.3)."""
    upstream = spec.upstream_node_to_trace
    if upstream is None:
        return True
    return (
        upstream.attention_trace_type is AttentionTraceType.V
        and spec.downstream_node_to_trace is None
    )


def loss_config_for(spec: TdbRequestSpec) -> LossFnConfig | None:
    if not keeps_loss(spec):
        return None
    return LossFnConfig(
        name=LossFnName.LOGIT_DIFF,
        target_tokens=list(spec.target_tokens),
        distractor_tokens=list(spec.distractor_tokens),
    )


def current_token_index(spec: TdbRequestSpec) -> int:
    """The traced node's token, else -1: the position of the top output-token logits (§6.2)."""
    upstream = spec.upstream_node_to_trace
    if upstream is not None and upstream.node_index.tensor_indices:
        first = upstream.node_index.tensor_indices[0]
        if first is not None:
            return first
    return -1


def processing_specs_for(spec: TdbRequestSpec) -> dict:
    """The eight processing specs of §6.4, in their key order (also the response order)."""
    specs: dict = {
        NODE_TABLE_SPEC_NAME: MultipleTopKDerivedScalarsRequestSpec(
            dst_list_by_group_id=component_groups(
                spec.component_type_for_mlp, spec.component_type_for_attention
            ),
            token_index=None,
            top_and_bottom_k=spec.top_and_bottom_k_for_node_table,
            pass_type=PassType.FORWARD,
        ),
        "componentSumsForTokenDisplay": MultipleTopKDerivedScalarsRequestSpec(
            dst_list_by_group_id=component_groups(
                ComponentTypeForMlp.NEURON, ComponentTypeForAttention.ATTENTION_HEAD
            ),
            token_index=None,
            top_and_bottom_k=1,
            pass_type=PassType.FORWARD,
        ),
    }
    for name, scoring_type in SCORED_TOKEN_SPECS:
        specs[name] = ScoredTokensRequestSpec(
            token_scoring_type=scoring_type,
            num_tokens=10,
            depends_on_spec_name=NODE_TABLE_SPEC_NAME,
        )
    specs["tokenPairAttribution"] = TokenPairAttributionRequestSpec(
        num_tokens_attended_to=3, depends_on_spec_name=NODE_TABLE_SPEC_NAME
    )
    specs["topOutputTokenLogits"] = MultipleTopKDerivedScalarsRequestSpec(
        dst_list_by_group_id={GroupId.LOGITS: [DST.LOGITS]},
        token_index=current_token_index(spec),
        top_and_bottom_k=100,
        pass_type=PassType.FORWARD,
    )
    return specs


def convert_tdb_request(spec: TdbRequestSpec, path: str = "") -> InferenceSubRequest:
    """One TDB sub-request as the batched sub-request TDB's server runs (protocol.md §6).

    ``path`` (e.g. ``subRequests.0``) prefixes the field paths of the errors conversion raises.
    """
    ablations = [
        ablation_spec_for(ablation, _join(path, f"nodeAblations.{i}"))
        for i, ablation in enumerate(spec.node_ablations or ())
    ]
    inference_spec = InferenceRequestSpec(
        prompt=spec.prompt,
        ablation_specs=[*ablations, LN_F_SCALE_BACKWARD_ABLATION],
        loss_fn_config=loss_config_for(spec),
        trace_config=trace_config_for(spec, path),
        activation_index_for_within_layer_grad=None,
    )
    return InferenceSubRequest(
        inference_request_spec=inference_spec,
        processing_request_spec_by_name=processing_specs_for(spec),
    )


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}.{rest}" if prefix else rest

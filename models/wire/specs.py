"""Wire models of the processing specs and their response data (protocol.md §3.5-§3.10), and of
TDB's own request spec."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    model_serializer,
    model_validator,
)

from models.wire.base import (
    Bool,
    FiniteFloat,
    Int,
    Str,
    WireModel,
    _tag_by,
)
from models.wire.enums import (
    ComponentTypeForAttention,
    ComponentTypeForMlp,
    DerivedScalarType,
    Dimension,
    GroupId,
    PassType,
    ProcessingResponseDataType,
    SpecType,
    TokenScoringType,
)
from models.wire.inference import (
    InferenceRequest,
    InferenceResponse,
    MirroredNodeIndex,
    NodeAblation,
    NodeToTrace,
    Tensor0D,
    Tensor1D,
    Tensor2D,
    Tensor3D,
)

# ---------------------------------------------------------------------------------------------
# Request specs: the base that writes specType only when it was given


class RequestSpec(WireModel):
    """Base of the processing request specs and of TdbRequestSpec."""

    @model_serializer(mode="wrap")
    def _write_spec_type_only_if_given(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if "spec_type" not in self.model_fields_set and isinstance(data, dict):
            data.pop("specType", None)
            data.pop("spec_type", None)
        return data


# ---------------------------------------------------------------------------------------------
# 3.5 Derived scalars


class NodeIdAndDatasets(WireModel):
    dst: DerivedScalarType
    layer_index: Int
    activation_index: Int
    datasets: list[Str]


class DerivedScalarsRequestSpec(RequestSpec):
    spec_type: Literal[SpecType.DERIVED_SCALARS_REQUEST_SPEC] = (
        SpecType.DERIVED_SCALARS_REQUEST_SPEC
    )
    dst: DerivedScalarType
    layer_index: Int | None = None
    activation_index: Int
    normalize_activations_using_neuron_record: NodeIdAndDatasets | None = None
    pass_type: PassType = PassType.FORWARD
    num_top_tokens: Int | None = None


class DerivedScalarsRequest(InferenceRequest):
    derived_scalars_request_spec: DerivedScalarsRequestSpec


class TokenAndRawScalar(WireModel):
    token: str
    scalar: FiniteFloat


class TokenAndScalar(TokenAndRawScalar):
    normalized_scalar: FiniteFloat


class TopTokens(WireModel):
    top: list[TokenAndScalar]
    bottom: list[TokenAndScalar]


class DerivedScalarsResponseData(WireModel):
    response_data_type: Literal[ProcessingResponseDataType.DERIVED_SCALARS_RESPONSE_DATA] = (
        ProcessingResponseDataType.DERIVED_SCALARS_RESPONSE_DATA
    )
    activations: list[float]
    normalized_activations: list[float] | None = None
    node_indices: list[MirroredNodeIndex]
    top_tokens: TopTokens | None = None


class DerivedScalarsResponse(InferenceResponse):
    derived_scalars_response_data: DerivedScalarsResponseData


# ---------------------------------------------------------------------------------------------
# 3.6 Derived attention scalars


class DerivedAttentionScalarsRequestSpec(RequestSpec):
    spec_type: Literal[SpecType.DERIVED_ATTENTION_SCALARS_REQUEST_SPEC] = (
        SpecType.DERIVED_ATTENTION_SCALARS_REQUEST_SPEC
    )
    dst: DerivedScalarType
    layer_index: Int | None = None
    activation_index: Int
    normalize_activations_using_neuron_record: NodeIdAndDatasets | None = None


class DerivedAttentionScalarsRequest(InferenceRequest):
    derived_attention_scalars_request_spec: DerivedAttentionScalarsRequestSpec


class TokenAndRawAttentionScalars(WireModel):
    token: str
    scalars: list[float]


class TokenAndAttentionScalars(TokenAndRawAttentionScalars):
    normalized_scalars: list[float]
    total_scalar_in: float
    normalized_total_scalar_in: float
    max_scalar_in: float
    normalized_max_scalar_in: float
    total_scalar_out: float
    normalized_total_scalar_out: float
    max_scalar_out: float
    normalized_max_scalar_out: float


class DerivedAttentionScalarsResponseData(WireModel):
    response_data_type: Literal[
        ProcessingResponseDataType.DERIVED_ATTENTION_SCALARS_RESPONSE_DATA
    ] = ProcessingResponseDataType.DERIVED_ATTENTION_SCALARS_RESPONSE_DATA
    token_and_attention_scalars_list: list[TokenAndAttentionScalars]


class DerivedAttentionScalarsResponse(InferenceResponse):
    derived_attention_scalars_response_data: DerivedAttentionScalarsResponseData


# ---------------------------------------------------------------------------------------------
# 3.7 Multiple top-k


DEFAULT_DIMENSIONS_TO_KEEP_FOR_INTERMEDIATE_SUM: tuple[Dimension, ...] = (
    Dimension.SEQUENCE_TOKENS,
    Dimension.ATTENDED_TO_SEQUENCE_TOKENS,
)


class MultipleTopKDerivedScalarsRequestSpec(RequestSpec):
    spec_type: Literal[SpecType.MULTIPLE_TOP_K_DERIVED_SCALARS_REQUEST_SPEC] = (
        SpecType.MULTIPLE_TOP_K_DERIVED_SCALARS_REQUEST_SPEC
    )
    dst_list_by_group_id: dict[GroupId, list[DerivedScalarType]]
    token_index: Int | None = None
    top_and_bottom_k: Int | None = None
    pass_type: PassType = PassType.FORWARD
    dimensions_to_keep_for_intermediate_sum: list[Dimension] = Field(
        default_factory=lambda: list(DEFAULT_DIMENSIONS_TO_KEEP_FOR_INTERMEDIATE_SUM)
    )


class MultipleTopKDerivedScalarsRequest(InferenceRequest):
    multiple_top_k_derived_scalars_request_spec: MultipleTopKDerivedScalarsRequestSpec


TensorND = Annotated[
    Annotated[Tensor0D, Tag("Tensor0D")]
    | Annotated[Tensor1D, Tag("Tensor1D")]
    | Annotated[Tensor2D, Tag("Tensor2D")]
    | Annotated[Tensor3D, Tag("Tensor3D")],
    Discriminator(_tag_by("tensor_type", (Tensor0D, Tensor1D, Tensor2D, Tensor3D))),
]


class MultipleTopKDerivedScalarsResponseData(WireModel):
    response_data_type: Literal[
        ProcessingResponseDataType.MULTIPLE_TOP_K_DERIVED_SCALARS_RESPONSE_DATA
    ] = ProcessingResponseDataType.MULTIPLE_TOP_K_DERIVED_SCALARS_RESPONSE_DATA
    activations_by_group_id: dict[GroupId, list[float]]
    node_indices: list[MirroredNodeIndex]
    vocab_token_strings_for_indices: list[str | None] | None = None
    intermediate_sum_activations_by_dst_by_group_id: dict[
        GroupId, dict[DerivedScalarType, TensorND]
    ]

    @model_validator(mode="after")
    def _lists_parallel_to_node_indices(self) -> MultipleTopKDerivedScalarsResponseData:
        n = len(self.node_indices)
        for group_id, values in self.activations_by_group_id.items():
            if len(values) != n:
                raise ValueError(f"{group_id} has {len(values)} values for {n} node indices")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{group_id} has a non-finite value")
        strings = self.vocab_token_strings_for_indices
        if strings is not None and len(strings) != n:
            raise ValueError(f"{len(strings)} vocab token strings for {n} node indices")
        return self


class MultipleTopKDerivedScalarsResponse(InferenceResponse):
    multiple_top_k_derived_scalars_response_data: MultipleTopKDerivedScalarsResponseData


# ---------------------------------------------------------------------------------------------
# 3.8 Scored tokens


class ScoredTokensRequestSpec(RequestSpec):
    spec_type: Literal[SpecType.SCORED_TOKENS_REQUEST_SPEC] = SpecType.SCORED_TOKENS_REQUEST_SPEC
    token_scoring_type: TokenScoringType
    num_tokens: Int
    depends_on_spec_name: Str


class ScoredTokensRequest(InferenceRequest):
    scored_tokens_request_spec: ScoredTokensRequestSpec


class ScoredTokensResponseData(WireModel):
    response_data_type: Literal[ProcessingResponseDataType.SCORED_TOKENS_RESPONSE_DATA] = (
        ProcessingResponseDataType.SCORED_TOKENS_RESPONSE_DATA
    )
    node_indices: list[MirroredNodeIndex]
    top_tokens_list: list[TopTokens | None]


class ScoredTokensResponse(InferenceResponse):
    scored_tokens_response_data: ScoredTokensResponseData


# ---------------------------------------------------------------------------------------------
# 3.9 Token-pair attribution


class TopTokensAttendedTo(WireModel):
    token_indices: list[int]
    attributions: list[float]


class TokenPairAttributionRequestSpec(RequestSpec):
    spec_type: Literal[SpecType.TOKEN_PAIR_ATTRIBUTION_REQUEST_SPEC] = (
        SpecType.TOKEN_PAIR_ATTRIBUTION_REQUEST_SPEC
    )
    num_tokens_attended_to: Int
    depends_on_spec_name: Str


class TokenPairAttributionRequest(InferenceRequest):
    token_pair_attribution_request_spec: TokenPairAttributionRequestSpec


class TokenPairAttributionResponseData(WireModel):
    response_data_type: Literal[ProcessingResponseDataType.TOKEN_PAIR_ATTRIBUTION_RESPONSE_DATA] = (
        ProcessingResponseDataType.TOKEN_PAIR_ATTRIBUTION_RESPONSE_DATA
    )
    node_indices: list[MirroredNodeIndex]
    top_tokens_attended_to_list: list[TopTokensAttendedTo | None]


class TokenPairAttributionResponse(InferenceResponse):
    token_pair_attribution_response_data: TokenPairAttributionResponseData


# ---------------------------------------------------------------------------------------------
# 3.10 TDB requests


class TdbRequestSpec(RequestSpec):
    spec_type: Literal[SpecType.TDB_REQUEST_SPEC] = SpecType.TDB_REQUEST_SPEC
    prompt: Str
    target_tokens: list[Str]
    distractor_tokens: list[Str]
    component_type_for_mlp: ComponentTypeForMlp
    component_type_for_attention: ComponentTypeForAttention
    top_and_bottom_k_for_node_table: Int
    hide_early_layers_when_ablating: Bool  # accepted and ignored (protocol.md §6.6)
    node_ablations: list[NodeAblation] | None = None
    upstream_node_to_trace: NodeToTrace | None = None
    downstream_node_to_trace: NodeToTrace | None = None


class BatchedTdbRequest(WireModel):
    sub_requests: list[TdbRequestSpec]

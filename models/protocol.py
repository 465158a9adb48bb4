"""Pydantic v2 models of TDB's wire protocol (protocol.md §1-§3), with TDB's class and field names.

Every model reads and writes the JSON TDB's activation server reads and writes: camelCase keys made
by TDB's rule (``tdb_camel``), every field written in declared order, unknown keys ignored, both
spellings of a key accepted on input (the camelCase one wins when both are given, as in TDB), an
explicit ``null`` only where the type admits it, enums by exact value only.

Deliberate differences from TDB (allowed by protocol.md §1.2 item 5 and §1.4):

* Scalars in requests are strict: an int field takes a JSON integer only (not ``3.0``, ``"3"`` or
  ``true``), a float field a JSON number, a string field a JSON string, a bool field ``true`` or
  ``false``. TDB's own client always sends these types. Response models are lax (they are built by
  the engine and read back by clients).
* An explicit, correct ``specType`` is accepted and selects the spec type (TDB answers 422); a wrong
  one is a 422. Without ``specType`` a processing spec is resolved structurally in TDB's order
  (``_spec_tag``). Request specs write ``specType`` only when it was given, so a request parsed
  from TDB's client's JSON re-serialises to the same text and stays readable by TDB.

Entry points: ``parse_request(endpoint, body)``, ``to_wire(model)``, ``REQUEST_MODELS``,
``RESPONSE_MODELS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    SerializerFunctionWrapHandler,
    Strict,
    Tag,
    ValidationError,
    model_serializer,
    model_validator,
)

from models.errors import NotFoundError
from models.indexing import (
    ActivationLocationType,
    AttentionTraceType,
    ComponentTypeForAttention,
    ComponentTypeForMlp,
    DerivedScalarType,
    Dimension,
    GroupId,
    LossFnName,
    NodeType,
    PassType,
    PreOrPostAct,
    ProcessingResponseDataType,
    SpecType,
    TensorType,
    TokenScoringType,
)
from models.wirepath import validation_error


def tdb_camel(name: str) -> str:
    """TDB's key rule: the first piece as is, each later one capitalised (``tensor_0d`` -> ``tensor0d``).

    Not pydantic's ``to_camel``, which would give ``tensor0D``.
    """
    first, *rest = name.split("_")
    return first + "".join(piece[:1].upper() + piece[1:].lower() for piece in rest)


class WireModel(BaseModel):
    """Base of every wire type."""

    model_config = ConfigDict(
        alias_generator=tdb_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
        extra="ignore",
        loc_by_alias=False,  # error locations use field names; models.wirepath turns them into keys
    )


# Strict request scalars (see the module docstring).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]


def _activation_tensor_index(value: Any) -> int | str:
    if type(value) is int or value == "All":
        return value
    raise ValueError('must be an integer or the string "All"')


# One entry of MirroredActivationIndex.tensorIndices: an int, or exactly "All" (the whole axis).
ActivationTensorIndex = Annotated[
    int | Literal["All"],
    PlainValidator(_activation_tensor_index, json_schema_input_type=int | Literal["All"]),
]


# ---------------------------------------------------------------------------------------------
# 3.1 Indices, ablations, traces


class MirroredNodeIndex(WireModel):
    """One node at one token (or token pair); hashable, equal when all four fields are equal."""

    node_type: NodeType
    tensor_indices: tuple[Int | None, ...]
    layer_index: Int | None = None
    pass_type: PassType


class MirroredActivationIndex(WireModel):
    """A slice of one hook point; ``"All"`` selects a whole axis."""

    activation_location_type: ActivationLocationType
    tensor_indices: tuple[ActivationTensorIndex, ...]
    layer_index: Int | None = None
    pass_type: PassType


class AblationSpec(WireModel):
    index: MirroredActivationIndex
    value: Float


class NodeAblation(WireModel):
    node_index: MirroredNodeIndex
    value: Float


class MirroredTraceConfig(WireModel):
    node_index: MirroredNodeIndex
    pre_or_post_act: PreOrPostAct
    detach_layer_norm_scale: Bool
    attention_trace_type: AttentionTraceType | None = None
    downstream_trace_config: MirroredTraceConfig | None = None


class NodeToTrace(WireModel):
    node_index: MirroredNodeIndex
    attention_trace_type: AttentionTraceType | None = None
    downstream_trace_config: MirroredTraceConfig | None = None  # ignored by TDB's conversion


# ---------------------------------------------------------------------------------------------
# 3.2 Inference request and inference data


class LossFnConfig(WireModel):
    name: LossFnName
    target_tokens: list[Str] | None = None
    distractor_tokens: list[Str] | None = None


class InferenceRequestSpec(WireModel):
    prompt: Str
    ablation_specs: list[AblationSpec] | None = None
    loss_fn_config: LossFnConfig | None = None
    trace_config: MirroredTraceConfig | None = None
    activation_index_for_within_layer_grad: MirroredActivationIndex | None = None


class InferenceRequest(WireModel):
    inference_request_spec: InferenceRequestSpec


class InferenceData(WireModel):
    inference_time: float
    memory_used_before: float | None = None
    memory_used_after: float | None = None
    log: str | None = None
    loss: float | None = None
    activation_value_for_backward_pass: float | None = None


class InferenceAndTokenData(InferenceData):
    tokens_as_ints: list[int]
    tokens_as_strings: list[str]


class InferenceResponse(WireModel):
    inference_and_token_data: InferenceAndTokenData


# ---------------------------------------------------------------------------------------------
# Tags of the unions


_MISSING = object()


def _wire_get(data: dict, field: str) -> Any:
    """The value of ``field`` in raw input, under its camelCase key (which wins) or its own name."""
    alias = tdb_camel(field)
    if alias in data:
        return data[alias]
    return data.get(field, _MISSING)


def _tag_by(field: str, classes: tuple[type[WireModel], ...]) -> Callable[[Any], str | None]:
    """A discriminator: the name of the class whose default for ``field`` is the input's value."""
    by_value = {str(cls.model_fields[field].default.value): cls.__name__ for cls in classes}
    names = {cls.__name__ for cls in classes}

    def tag(value: Any) -> str | None:
        if isinstance(value, BaseModel):
            return type(value).__name__ if type(value).__name__ in names else None
        if isinstance(value, dict):
            given = _wire_get(value, field)
            return by_value.get(given) if isinstance(given, str) else None
        return None

    return tag


# ---------------------------------------------------------------------------------------------
# 3.3 Tensors


class Tensor0D(WireModel):
    tensor_type: Literal[TensorType.TENSOR_0D] = TensorType.TENSOR_0D
    value: float


class Tensor1D(WireModel):
    tensor_type: Literal[TensorType.TENSOR_1D] = TensorType.TENSOR_1D
    value: list[float]


class Tensor2D(WireModel):
    tensor_type: Literal[TensorType.TENSOR_2D] = TensorType.TENSOR_2D
    value: list[list[float]]


class Tensor3D(WireModel):
    tensor_type: Literal[TensorType.TENSOR_3D] = TensorType.TENSOR_3D
    value: list[list[list[float]]]


# ---------------------------------------------------------------------------------------------
# 3.4 Model info


class ModelInfoResponse(WireModel):
    model_name: str | None = None
    has_mlp_autoencoder: bool
    mlp_autoencoder_name: str | None = None
    has_attention_autoencoder: bool
    attention_autoencoder_name: str | None = None
    n_layers: int


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


# ---------------------------------------------------------------------------------------------
# 1.4 The processing spec and response data unions


_SPECS_IN_TDB_ORDER: tuple[type[RequestSpec], ...] = (
    MultipleTopKDerivedScalarsRequestSpec,
    DerivedScalarsRequestSpec,
    DerivedAttentionScalarsRequestSpec,
    ScoredTokensRequestSpec,
    TokenPairAttributionRequestSpec,
)
_SPEC_BY_TYPE = {str(c.model_fields["spec_type"].default.value): c for c in _SPECS_IN_TDB_ORDER}


class _UnknownSpecType(WireModel):
    """Where a spec with a wrong explicit ``specType`` goes, so the error names that key."""

    spec_type: Literal[tuple(_SPEC_BY_TYPE)]  # type: ignore[valid-type]


def _has_required_keys(cls: type[WireModel], data: dict) -> bool:
    return all(
        _wire_get(data, name) is not _MISSING
        for name, field in cls.model_fields.items()
        if field.is_required()
    )


def _validates(cls: type[WireModel], data: dict) -> bool:
    try:
        cls.model_validate(data)
    except ValidationError:
        return False
    return True


def _spec_tag(value: Any) -> str | None:
    """Resolve a processing spec as TDB does (protocol.md §1.4), or by its explicit ``specType``.

    Without ``specType``: the first type in TDB's order whose required keys are present and whose
    validation succeeds; failing that, the first whose required keys are present (its errors are
    reported); failing that, none (an error naming the expected keys).
    """
    if isinstance(value, BaseModel):
        return type(value).__name__ if type(value) in _SPECS_IN_TDB_ORDER else None
    if not isinstance(value, dict):
        return None
    given = _wire_get(value, "spec_type")
    if given is not _MISSING:
        cls = _SPEC_BY_TYPE.get(given) if isinstance(given, str) else None
        return cls.__name__ if cls else _UnknownSpecType.__name__
    candidates = [cls for cls in _SPECS_IN_TDB_ORDER if _has_required_keys(cls, value)]
    for cls in candidates:
        if _validates(cls, value):
            return cls.__name__
    return candidates[0].__name__ if candidates else None


ProcessingRequestSpec = Annotated[
    Annotated[MultipleTopKDerivedScalarsRequestSpec, Tag("MultipleTopKDerivedScalarsRequestSpec")]
    | Annotated[DerivedScalarsRequestSpec, Tag("DerivedScalarsRequestSpec")]
    | Annotated[DerivedAttentionScalarsRequestSpec, Tag("DerivedAttentionScalarsRequestSpec")]
    | Annotated[ScoredTokensRequestSpec, Tag("ScoredTokensRequestSpec")]
    | Annotated[TokenPairAttributionRequestSpec, Tag("TokenPairAttributionRequestSpec")]
    | Annotated[_UnknownSpecType, Tag("_UnknownSpecType")],
    Discriminator(
        _spec_tag,
        custom_error_type="processing_spec_unresolved",
        custom_error_message=(
            "not a processing request spec: give dstListByGroupId (multiple top-k), "
            "dst and activationIndex (derived scalars), tokenScoringType, numTokens and "
            "dependsOnSpecName (scored tokens), numTokensAttendedTo and dependsOnSpecName "
            "(token-pair attribution), or an explicit specType"
        ),
    ),
]

_RESPONSE_DATA_TYPES: tuple[type[WireModel], ...] = (
    MultipleTopKDerivedScalarsResponseData,
    DerivedScalarsResponseData,
    DerivedAttentionScalarsResponseData,
    ScoredTokensResponseData,
    TokenPairAttributionResponseData,
)

ProcessingResponseData = Annotated[
    Annotated[MultipleTopKDerivedScalarsResponseData, Tag("MultipleTopKDerivedScalarsResponseData")]
    | Annotated[DerivedScalarsResponseData, Tag("DerivedScalarsResponseData")]
    | Annotated[DerivedAttentionScalarsResponseData, Tag("DerivedAttentionScalarsResponseData")]
    | Annotated[ScoredTokensResponseData, Tag("ScoredTokensResponseData")]
    | Annotated[TokenPairAttributionResponseData, Tag("TokenPairAttributionResponseData")],
    Discriminator(_tag_by("response_data_type", _RESPONSE_DATA_TYPES)),
]


# ---------------------------------------------------------------------------------------------
# 3.11 Batching


class InferenceSubRequest(WireModel):
    inference_request_spec: InferenceRequestSpec
    processing_request_spec_by_name: dict[str, ProcessingRequestSpec] = Field(default_factory=dict)


class InferenceResponseAndResponseDict(WireModel):
    inference_response: InferenceResponse
    processing_response_data_by_name: dict[str, ProcessingResponseData]


class BatchedRequest(WireModel):
    inference_sub_requests: list[InferenceSubRequest]


class BatchedResponse(WireModel):
    inference_sub_responses: list[InferenceResponseAndResponseDict]


# ---------------------------------------------------------------------------------------------
# Endpoints: parsing requests, writing wire dicts

REQUEST_MODELS: dict[str, type[WireModel]] = {
    "derived_scalars": DerivedScalarsRequest,
    "derived_attention_scalars": DerivedAttentionScalarsRequest,
    "multiple_top_k_derived_scalars": MultipleTopKDerivedScalarsRequest,
    "batched": BatchedRequest,
    "batched_tdb": BatchedTdbRequest,
}

RESPONSE_MODELS: dict[str, type[WireModel]] = {
    "derived_scalars": DerivedScalarsResponse,
    "derived_attention_scalars": DerivedAttentionScalarsResponse,
    "multiple_top_k_derived_scalars": MultipleTopKDerivedScalarsResponse,
    "batched": BatchedResponse,
    "batched_tdb": BatchedResponse,
    "model_info": ModelInfoResponse,
}


def parse_request(endpoint: str, body: bytes | str | dict) -> WireModel:
    """Parse a request body (raw JSON or an already decoded dict) with the endpoint's model.

    Raises NotFoundError for an unknown endpoint and RequestValidationError (422) naming the first
    offending field by its camelCase path; malformed JSON gives a path of None.
    """
    model = REQUEST_MODELS.get(endpoint)
    if model is None:
        raise NotFoundError(
            f"unknown endpoint {endpoint!r}; expected one of {sorted(REQUEST_MODELS)}"
        )
    return parse_as(model, body)


def parse_as(model: type[WireModel], body: bytes | str | dict) -> WireModel:
    """Parse ``body`` as ``model``, turning pydantic's errors into a RequestValidationError."""
    try:
        if isinstance(body, bytes | str):
            return model.model_validate_json(body)
        return model.model_validate(body)
    except ValidationError as error:
        raise validation_error(model, error) from None


def to_wire(model: WireModel) -> dict:
    """The model as wire JSON types: every field, declared order, camelCase keys."""
    return model.model_dump(mode="json", by_alias=True)

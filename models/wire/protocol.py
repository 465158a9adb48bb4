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

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    Tag,
    ValidationError,
)

from models.errors import NotFoundError
from models.wire.base import (
    _MISSING,
    ActivationTensorIndex,
    Bool,
    FiniteFloat,
    Float,
    Int,
    Str,
    WireModel,
    _tag_by,
    _wire_get,
    tdb_camel,
)
from models.wire.inference import (
    AblationSpec,
    InferenceAndTokenData,
    InferenceData,
    InferenceRequest,
    InferenceRequestSpec,
    InferenceResponse,
    LossFnConfig,
    MirroredActivationIndex,
    MirroredNodeIndex,
    MirroredTraceConfig,
    ModelInfoResponse,
    NodeAblation,
    NodeToTrace,
    Tensor0D,
    Tensor1D,
    Tensor2D,
    Tensor3D,
)
from models.wire.paths import validation_error
from models.wire.specs import (
    DEFAULT_DIMENSIONS_TO_KEEP_FOR_INTERMEDIATE_SUM,
    BatchedTdbRequest,
    DerivedAttentionScalarsRequest,
    DerivedAttentionScalarsRequestSpec,
    DerivedAttentionScalarsResponse,
    DerivedAttentionScalarsResponseData,
    DerivedScalarsRequest,
    DerivedScalarsRequestSpec,
    DerivedScalarsResponse,
    DerivedScalarsResponseData,
    MultipleTopKDerivedScalarsRequest,
    MultipleTopKDerivedScalarsRequestSpec,
    MultipleTopKDerivedScalarsResponse,
    MultipleTopKDerivedScalarsResponseData,
    NodeIdAndDatasets,
    RequestSpec,
    ScoredTokensRequest,
    ScoredTokensRequestSpec,
    ScoredTokensResponse,
    ScoredTokensResponseData,
    TdbRequestSpec,
    TensorND,
    TokenAndAttentionScalars,
    TokenAndRawAttentionScalars,
    TokenAndRawScalar,
    TokenAndScalar,
    TokenPairAttributionRequest,
    TokenPairAttributionRequestSpec,
    TokenPairAttributionResponse,
    TokenPairAttributionResponseData,
    TopTokens,
    TopTokensAttendedTo,
)

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


def parse_request(endpoint: str, body: bytes | bytearray | str | dict) -> WireModel:
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


def parse_as(model: type[WireModel], body: bytes | bytearray | str | dict) -> WireModel:
    """Parse ``body`` as ``model``, turning pydantic's errors into a RequestValidationError."""
    try:
        if isinstance(body, bytes | bytearray | str):
            return model.model_validate_json(body)
        return model.model_validate(body)
    except ValidationError as error:
        raise validation_error(model, error) from None


def to_wire(model: WireModel) -> dict:
    """The model as wire JSON types: every field, declared order, camelCase keys."""
    return model.model_dump(mode="json", by_alias=True)


__all__ = [
    "WireModel",
    "Int",
    "Float",
    "Str",
    "Bool",
    "FiniteFloat",
    "ActivationTensorIndex",
    "tdb_camel",
    "MirroredNodeIndex",
    "MirroredActivationIndex",
    "AblationSpec",
    "NodeAblation",
    "MirroredTraceConfig",
    "NodeToTrace",
    "LossFnConfig",
    "InferenceRequestSpec",
    "InferenceRequest",
    "InferenceData",
    "InferenceAndTokenData",
    "InferenceResponse",
    "Tensor0D",
    "Tensor1D",
    "Tensor2D",
    "Tensor3D",
    "ModelInfoResponse",
    "RequestSpec",
    "NodeIdAndDatasets",
    "DerivedScalarsRequestSpec",
    "DerivedScalarsRequest",
    "TokenAndRawScalar",
    "TokenAndScalar",
    "TopTokens",
    "DerivedScalarsResponseData",
    "DerivedScalarsResponse",
    "DerivedAttentionScalarsRequestSpec",
    "DerivedAttentionScalarsRequest",
    "TokenAndRawAttentionScalars",
    "TokenAndAttentionScalars",
    "DerivedAttentionScalarsResponseData",
    "DerivedAttentionScalarsResponse",
    "MultipleTopKDerivedScalarsRequestSpec",
    "MultipleTopKDerivedScalarsRequest",
    "MultipleTopKDerivedScalarsResponseData",
    "MultipleTopKDerivedScalarsResponse",
    "ScoredTokensRequestSpec",
    "ScoredTokensRequest",
    "ScoredTokensResponseData",
    "ScoredTokensResponse",
    "TopTokensAttendedTo",
    "TokenPairAttributionRequestSpec",
    "TokenPairAttributionRequest",
    "TokenPairAttributionResponseData",
    "TokenPairAttributionResponse",
    "TdbRequestSpec",
    "BatchedTdbRequest",
    "DEFAULT_DIMENSIONS_TO_KEEP_FOR_INTERMEDIATE_SUM",
    "TensorND",
    "ProcessingRequestSpec",
    "ProcessingResponseData",
    "InferenceSubRequest",
    "InferenceResponseAndResponseDict",
    "BatchedRequest",
    "BatchedResponse",
    "REQUEST_MODELS",
    "RESPONSE_MODELS",
    "parse_request",
    "parse_as",
    "to_wire",
]

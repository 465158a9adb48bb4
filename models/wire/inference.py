"""Wire models of the inference side (protocol.md §3.1-§3.4): node and activation indices,
ablations, traces, the inference request and its data, tensors, model info."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Strict

from models.wire.base import (
    ActivationTensorIndex,
    Bool,
    Int,
    Str,
    WireModel,
    _finite,
)
from models.wire.enums import (
    ActivationLocationType,
    AttentionTraceType,
    LossFnName,
    NodeType,
    PassType,
    PreOrPostAct,
    TensorType,
)

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


# An ablation's value is set into activations: NaN or infinity (``1e400``) would fail the job on
# the worker, so it is refused at submission.
AblationValue = Annotated[float, Strict(), AfterValidator(_finite)]


class AblationSpec(WireModel):
    index: MirroredActivationIndex
    value: AblationValue


class NodeAblation(WireModel):
    node_index: MirroredNodeIndex
    value: AblationValue


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

"""Enumerations of TDB's wire protocol (protocol.md §2).

Every enum here is a ``StrEnum`` (a ``str`` and an ``Enum``) whose values are exactly TDB's wire
strings, so a member compares equal to its wire value and pydantic accepts only the value, never
the name. What each location and derived scalar holds is in ``models.wire.shapes``.
"""

from __future__ import annotations

from enum import StrEnum, auto


class SpecType(StrEnum):
    ACTIVATIONS_REQUEST_SPEC = "activations_request_spec"
    DERIVED_SCALARS_REQUEST_SPEC = "derived_scalars_request_spec"
    DERIVED_ATTENTION_SCALARS_REQUEST_SPEC = "derived_attention_scalars_request_spec"
    MULTIPLE_TOP_K_DERIVED_SCALARS_REQUEST_SPEC = "multiple_top_k_derived_scalars_request_spec"
    SCORED_TOKENS_REQUEST_SPEC = "scored_tokens_request_spec"
    TDB_REQUEST_SPEC = "tdb_request_spec"
    TOKEN_PAIR_ATTRIBUTION_REQUEST_SPEC = "token_pair_attribution_request_spec"


class ProcessingResponseDataType(StrEnum):
    DERIVED_SCALARS_RESPONSE_DATA = "derived_scalars_response_data"
    DERIVED_ATTENTION_SCALARS_RESPONSE_DATA = "derived_attention_scalars_response_data"
    MULTIPLE_TOP_K_DERIVED_SCALARS_RESPONSE_DATA = "multiple_top_k_derived_scalars_response_data"
    SCORED_TOKENS_RESPONSE_DATA = "scored_tokens_response_data"
    TOKEN_PAIR_ATTRIBUTION_RESPONSE_DATA = "token_pair_attribution_response_data"


class LossFnName(StrEnum):
    LOGIT_DIFF = "logit_diff"
    LOGIT_MINUS_MEAN = "logit_minus_mean"
    PROBS = "probs"
    ZERO = "zero"


class GroupId(StrEnum):
    """A group of derived scalars whose values are compared with each other (protocol.md §5.5)."""

    ACT_TIMES_GRAD = "act_times_grad"
    ACTIVATION = "activation"
    DIRECT_WRITE_TO_GRAD = "direct_write_to_grad"
    DIRECTION_WRITE = "direction_write"
    LOGITS = "logits"
    MLP_LAYER_WRITE = "mlp_layer_write"
    SINGLETON = "singleton"
    TOKEN_WRITE = "token_write"
    TOKEN_READ = "token_read"
    WRITE_NORM = "write_norm"
    TOKEN_PAIR_ATTRIBUTION = "token_pair_attribution"

    @property
    def exclude_bottom_k(self) -> bool:
        """TDB's "top only" flag. Documentation only: TDB's pipeline never passes it on, so every
        group gets both its top and its bottom k (protocol.md §2, §5.5.2)."""
        return self in _TOP_ONLY_GROUPS


_TOP_ONLY_GROUPS = frozenset({GroupId.ACTIVATION, GroupId.LOGITS, GroupId.WRITE_NORM})


class TensorType(StrEnum):
    TENSOR_0D = "tensor_0d"
    TENSOR_1D = "tensor_1d"
    TENSOR_2D = "tensor_2d"
    TENSOR_3D = "tensor_3d"


class TokenScoringType(StrEnum):
    UPVOTED_OUTPUT_TOKENS = "upvoted_output_tokens"
    INPUT_TOKENS_THAT_UPVOTE_MLP = "input_tokens_that_upvote_mlp"
    INPUT_TOKENS_THAT_UPVOTE_ATTN_Q = "input_tokens_that_upvote_attn_q"
    INPUT_TOKENS_THAT_UPVOTE_ATTN_K = "input_tokens_that_upvote_attn_k"


class ComponentTypeForMlp(StrEnum):
    NEURON = "neuron"
    AUTOENCODER_LATENT = "autoencoder_latent"


class ComponentTypeForAttention(StrEnum):
    ATTENTION_HEAD = "attention_head"
    AUTOENCODER_LATENT = "autoencoder_latent"


class AttentionTraceType(StrEnum):
    Q = "Q"
    K = "K"
    QK = "QK"
    V = "V"


class PreOrPostAct(StrEnum):
    PRE = "pre"
    POST = "post"


class PassType(StrEnum):
    FORWARD = "forward"
    BACKWARD = "backward"


class NodeType(StrEnum):
    """What the last axis of a tensor indexes (engine.md §2.2)."""

    ATTENTION_HEAD = "attention_head"
    QK_CHANNEL = "qk_channel"
    V_CHANNEL = "v_channel"
    MLP_NEURON = "mlp_neuron"
    AUTOENCODER_LATENT = "autoencoder_latent"
    MLP_AUTOENCODER_LATENT = "mlp_autoencoder_latent"
    ATTENTION_AUTOENCODER_LATENT = "attention_autoencoder_latent"
    AUTOENCODER_LATENT_BY_TOKEN_PAIR = "autoencoder_latent_by_token_pair"
    LAYER = "layer"
    RESIDUAL_STREAM_CHANNEL = "residual_stream_channel"
    VOCAB_TOKEN = "vocab_token"

    @property
    def is_autoencoder(self) -> bool:
        return self in _AUTOENCODER_NODE_TYPES


_AUTOENCODER_NODE_TYPES = frozenset(
    {
        NodeType.AUTOENCODER_LATENT,
        NodeType.MLP_AUTOENCODER_LATENT,
        NodeType.ATTENTION_AUTOENCODER_LATENT,
        NodeType.AUTOENCODER_LATENT_BY_TOKEN_PAIR,
    }
)


class Dimension(StrEnum):
    """One axis of a per-sequence tensor (engine.md §2.1)."""

    SEQUENCE_TOKENS = "sequence_tokens"
    ATTENDED_TO_SEQUENCE_TOKENS = "attended_to_sequence_tokens"
    MAX_CONTEXT_LENGTH = "max_context_length"
    RESIDUAL_STREAM_CHANNELS = "residual_stream_channels"
    VOCAB_SIZE = "vocab_size"
    ATTN_HEADS = "attn_heads"
    QUERY_AND_KEY_CHANNELS = "query_and_key_channels"
    VALUE_CHANNELS = "value_channels"
    MLP_ACTS = "mlp_acts"
    LAYERS = "layers"
    SINGLETON = "singleton"
    AUTOENCODER_LATENTS = "autoencoder_latents"
    AUTOENCODER_LATENTS_BY_TOKEN_PAIR = "autoencoder_latents_by_token_pair"

    @property
    def is_sequence(self) -> bool:
        """True for the two axes whose size is the prompt's token count."""
        return self in (Dimension.SEQUENCE_TOKENS, Dimension.ATTENDED_TO_SEQUENCE_TOKENS)


class ActivationLocationType(StrEnum):
    """A hook point of the model (engine.md §1.5)."""

    RESID_POST_EMBEDDING = "resid.post_emb"
    RESID_DELTA_ATTN = "resid.delta_attn"
    RESID_POST_ATTN = "resid.post_attn"
    RESID_DELTA_MLP = "resid.delta_mlp"
    RESID_POST_MLP = "resid.post_mlp"
    RESID_POST_MLP_LAYER_NORM = "resid.post_mlp_ln"
    RESID_POST_ATTN_LAYER_NORM = "resid.post_attn_ln"
    RESID_POST_FINAL_LAYER_NORM = "resid.post_ln_f"
    MLP_INPUT_LAYER_NORM_SCALE = "mlp_ln.scale"
    ATTN_INPUT_LAYER_NORM_SCALE = "attn_ln.scale"
    RESID_FINAL_LAYER_NORM_SCALE = "resid.ln_f.scale"
    ATTN_QUERY = "attn.q"
    ATTN_KEY = "attn.k"
    ATTN_VALUE = "attn.v"
    ATTN_QK_LOGITS = "attn.qk_logits"
    ATTN_QK_PROBS = "attn.qk_probs"
    ATTN_WEIGHTED_SUM_OF_VALUES = "attn.v_out"
    MLP_PRE_ACT = "mlp.pre_act"
    MLP_POST_ACT = "mlp.post_act"
    LOGITS = "logits"
    ONLINE_AUTOENCODER_LATENT = "online_autoencoder_latent"
    ONLINE_MLP_AUTOENCODER_LATENT = "online_mlp_autoencoder_latent"
    ONLINE_ATTENTION_AUTOENCODER_LATENT = "online_attention_autoencoder_latent"
    ONLINE_MLP_AUTOENCODER_ERROR = "online_mlp_autoencoder_error"
    ONLINE_RESIDUAL_MLP_AUTOENCODER_ERROR = "online_residual_mlp_autoencoder_error"
    ONLINE_RESIDUAL_ATTENTION_AUTOENCODER_ERROR = "online_residual_attention_autoencoder_error"


class DerivedScalarType(StrEnum):
    """The 106 derived scalar types in TDB's declaration order (protocol.md Appendix A).

    Each value is the member's name in lower case (``StrEnum``'s ``auto()``), TDB's own rule.
    """

    LOGITS = auto()
    RESID_POST_EMBEDDING = auto()
    MLP_PRE_ACT = auto()
    MLP_POST_ACT = auto()
    RESID_DELTA_MLP = auto()
    RESID_POST_MLP = auto()
    ATTN_QUERY = auto()
    ATTN_KEY = auto()
    ATTN_VALUE = auto()
    ATTN_QK_LOGITS = auto()
    ATTN_QK_PROBS = auto()
    ATTN_WEIGHTED_SUM_OF_VALUES = auto()
    RESID_DELTA_ATTN = auto()
    RESID_POST_ATTN = auto()
    RESID_FINAL_LAYER_NORM_SCALE = auto()
    ATTN_INPUT_LAYER_NORM_SCALE = auto()
    MLP_INPUT_LAYER_NORM_SCALE = auto()
    ONLINE_AUTOENCODER_LATENT = auto()
    ATTN_WRITE_NORM = auto()
    FLATTENED_ATTN_POST_SOFTMAX = auto()
    ATTN_ACT_TIMES_GRAD = auto()
    RESID_DELTA_MLP_FROM_MLP_POST_ACT = auto()
    MLP_WRITE_NORM = auto()
    MLP_ACT_TIMES_GRAD = auto()
    AUTOENCODER_LATENT = auto()
    AUTOENCODER_WRITE_NORM = auto()
    MLP_WRITE_TO_FINAL_RESIDUAL_GRAD = auto()
    ATTN_WRITE_NORM_PER_SEQUENCE_TOKEN = auto()
    ATTN_WRITE_TO_FINAL_RESIDUAL_GRAD_PER_SEQUENCE_TOKEN = auto()
    ATTN_ACT_TIMES_GRAD_PER_SEQUENCE_TOKEN = auto()
    RESID_POST_EMBEDDING_NORM = auto()
    RESID_POST_MLP_NORM = auto()
    MLP_LAYER_WRITE_NORM = auto()
    RESID_POST_ATTN_NORM = auto()
    ATTN_LAYER_WRITE_NORM = auto()
    RESID_POST_EMBEDDING_PROJ_TO_FINAL_RESIDUAL_GRAD = auto()
    RESID_POST_MLP_PROJ_TO_FINAL_RESIDUAL_GRAD = auto()
    MLP_LAYER_WRITE_TO_FINAL_RESIDUAL_GRAD = auto()
    RESID_POST_ATTN_PROJ_TO_FINAL_RESIDUAL_GRAD = auto()
    ATTN_LAYER_WRITE_TO_FINAL_RESIDUAL_GRAD = auto()
    UNFLATTENED_ATTN_ACT_TIMES_GRAD = auto()
    UNFLATTENED_ATTN_WRITE_NORM = auto()
    UNFLATTENED_ATTN_WRITE_TO_FINAL_RESIDUAL_GRAD = auto()
    ATTN_WRITE_TO_FINAL_RESIDUAL_GRAD = auto()
    ONLINE_AUTOENCODER_ACT_TIMES_GRAD = auto()
    ONLINE_AUTOENCODER_WRITE_NORM = auto()
    ONLINE_AUTOENCODER_WRITE_TO_FINAL_RESIDUAL_GRAD = auto()
    ONLINE_MLP_AUTOENCODER_ERROR = auto()
    ONLINE_RESIDUAL_MLP_AUTOENCODER_ERROR = auto()
    ONLINE_RESIDUAL_ATTENTION_AUTOENCODER_ERROR = auto()
    ONLINE_MLP_AUTOENCODER_ERROR_ACT_TIMES_GRAD = auto()
    ONLINE_MLP_AUTOENCODER_ERROR_WRITE_NORM = auto()
    ONLINE_MLP_AUTOENCODER_ERROR_WRITE_TO_FINAL_RESIDUAL_GRAD = auto()
    ATTN_WRITE = auto()
    ATTN_WRITE_SUM_HEADS = auto()
    MLP_WRITE = auto()
    ONLINE_AUTOENCODER_WRITE = auto()
    ATTN_WEIGHTED_VALUE = auto()
    PREVIOUS_LAYER_RESID_POST_MLP = auto()
    MLP_WRITE_TO_FINAL_ACTIVATION_RESIDUAL_GRAD = auto()
    UNFLATTENED_ATTN_WRITE_TO_FINAL_ACTIVATION_RESIDUAL_GRAD = auto()
    ONLINE_AUTOENCODER_WRITE_TO_FINAL_ACTIVATION_RESIDUAL_GRAD = auto()
    RESID_POST_EMBEDDING_PROJ_TO_FINAL_ACTIVATION_RESIDUAL_GRAD = auto()
    AUTOENCODER_LATENT_GRAD_WRT_RESIDUAL_INPUT = auto()
    AUTOENCODER_LATENT_GRAD_WRT_MLP_POST_ACT_INPUT = auto()
    ATTN_WRITE_TO_LATENT = auto()
    ATTN_WRITE_TO_LATENT_SUMMED_OVER_HEADS = auto()
    FLATTENED_ATTN_WRITE_TO_LATENT_SUMMED_OVER_HEADS = auto()
    FLATTENED_ATTN_WRITE_TO_LATENT_SUMMED_OVER_HEADS_BATCHED = auto()
    ATTN_WRITE_TO_LATENT_PER_SEQUENCE_TOKEN = auto()
    ATTN_WRITE_TO_LATENT_PER_SEQUENCE_TOKEN_BATCHED = auto()
    TOKEN_ATTRIBUTION = auto()
    SINGLE_NODE_WRITE = auto()
    GRAD_OF_SINGLE_SUBNODE_ATTRIBUTION = auto()
    ATTN_OUT_EDGE_ATTRIBUTION = auto()
    MLP_OUT_EDGE_ATTRIBUTION = auto()
    ONLINE_AUTOENCODER_OUT_EDGE_ATTRIBUTION = auto()
    ATTN_QUERY_IN_EDGE_ATTRIBUTION = auto()
    ATTN_KEY_IN_EDGE_ATTRIBUTION = auto()
    ATTN_VALUE_IN_EDGE_ATTRIBUTION = auto()
    MLP_IN_EDGE_ATTRIBUTION = auto()
    ONLINE_AUTOENCODER_IN_EDGE_ATTRIBUTION = auto()
    TOKEN_OUT_EDGE_ATTRIBUTION = auto()
    SINGLE_NODE_WRITE_TO_FINAL_RESIDUAL_GRAD = auto()
    VOCAB_TOKEN_WRITE_TO_INPUT_DIRECTION = auto()
    ALWAYS_ONE = auto()
    ATTN_QUERY_IN_EDGE_ACTIVATION = auto()
    ATTN_KEY_IN_EDGE_ACTIVATION = auto()
    MLP_IN_EDGE_ACTIVATION = auto()
    ONLINE_AUTOENCODER_IN_EDGE_ACTIVATION = auto()
    MLP_AUTOENCODER_LATENT = auto()
    MLP_AUTOENCODER_WRITE_NORM = auto()
    ONLINE_MLP_AUTOENCODER_LATENT = auto()
    ONLINE_MLP_AUTOENCODER_WRITE = auto()
    ONLINE_MLP_AUTOENCODER_WRITE_NORM = auto()
    ONLINE_MLP_AUTOENCODER_ACT_TIMES_GRAD = auto()
    ONLINE_MLP_AUTOENCODER_WRITE_TO_FINAL_RESIDUAL_GRAD = auto()
    ONLINE_MLP_AUTOENCODER_WRITE_TO_FINAL_ACTIVATION_RESIDUAL_GRAD = auto()
    ATTENTION_AUTOENCODER_LATENT = auto()
    ATTENTION_AUTOENCODER_WRITE_NORM = auto()
    ONLINE_ATTENTION_AUTOENCODER_LATENT = auto()
    ONLINE_ATTENTION_AUTOENCODER_WRITE = auto()
    ONLINE_ATTENTION_AUTOENCODER_WRITE_NORM = auto()
    ONLINE_ATTENTION_AUTOENCODER_ACT_TIMES_GRAD = auto()
    ONLINE_ATTENTION_AUTOENCODER_WRITE_TO_FINAL_RESIDUAL_GRAD = auto()
    ONLINE_ATTENTION_AUTOENCODER_WRITE_TO_FINAL_ACTIVATION_RESIDUAL_GRAD = auto()

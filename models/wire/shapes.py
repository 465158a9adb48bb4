"""What each hook point and derived scalar holds, as tables (protocol.md Appendix A, engine.md §3).

Per hook point (``LOCATION_INFO``) and per derived scalar (``DST_INFO``): the shape of one
sequence's tensor, the node type its last axis indexes, whether it exists once per model rather
than per layer, and whether it needs an autoencoder. The API uses them to check indices before a
job is queued; the engine uses them to build its computations. Pure data: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.wire.enums import ActivationLocationType, DerivedScalarType, Dimension, NodeType

# Axis abbreviations of the tables below (those of protocol.md Appendix A).
_DIM_ABBREVIATIONS: dict[str, Dimension] = {
    "S": Dimension.SEQUENCE_TOKENS,
    "A": Dimension.ATTENDED_TO_SEQUENCE_TOKENS,
    "D": Dimension.RESIDUAL_STREAM_CHANNELS,
    "V": Dimension.VOCAB_SIZE,
    "H": Dimension.ATTN_HEADS,
    "QK": Dimension.QUERY_AND_KEY_CHANNELS,
    "VC": Dimension.VALUE_CHANNELS,
    "M": Dimension.MLP_ACTS,
    "L": Dimension.AUTOENCODER_LATENTS,
    "1": Dimension.SINGLETON,
}


@dataclass(frozen=True)
class LocationInfo:
    """What a hook point holds for one sequence."""

    dims: tuple[Dimension, ...]
    node_type: NodeType
    has_no_layers: bool  # exists once per model: its layerIndex must be null
    hookable: bool  # False for the three declared layer-norm outputs TDB cannot hook
    autoencoder: bool  # exists only with an autoencoder loaded


@dataclass(frozen=True)
class DstInfo:
    """What a derived scalar holds for one sequence (protocol.md Appendix A, engine.md §3)."""

    dims: tuple[Dimension, ...]
    node_type: NodeType
    needs_grad_for_forward: bool  # the FORWARD value needs a backward pass (engine.md §3.8)
    autoencoder: bool  # needs an autoencoder
    has_no_layers: bool  # keyed by layer None: the request's layerIndex must be null
    supports_backward: bool  # has a BACKWARD variant (passType "backward" allowed; engine.md §3)


# Columns: wire value, axes, node type, flags (N = no layers, X = not hookable, A = autoencoder).
_LOCATION_TABLE = """
resid.post_emb                               S D    residual_stream_channel  N
resid.delta_attn                             S D    residual_stream_channel  -
resid.post_attn                              S D    residual_stream_channel  -
resid.delta_mlp                              S D    residual_stream_channel  -
resid.post_mlp                               S D    residual_stream_channel  -
resid.post_mlp_ln                            S D    residual_stream_channel  X
resid.post_attn_ln                           S D    residual_stream_channel  X
resid.post_ln_f                              S D    residual_stream_channel  NX
mlp_ln.scale                                 S 1    layer                    -
attn_ln.scale                                S 1    layer                    -
resid.ln_f.scale                             S 1    layer                    N
attn.q                                       S H QK qk_channel               -
attn.k                                       A H QK qk_channel               -
attn.v                                       A H VC v_channel                -
attn.qk_logits                               S A H  attention_head           -
attn.qk_probs                                S A H  attention_head           -
attn.v_out                                   S H VC v_channel                -
mlp.pre_act                                  S M    mlp_neuron               -
mlp.post_act                                 S M    mlp_neuron               -
logits                                       S V    vocab_token              N
online_autoencoder_latent                    S L    autoencoder_latent       A
online_mlp_autoencoder_latent                S L    autoencoder_latent       A
online_attention_autoencoder_latent          S L    autoencoder_latent       A
online_mlp_autoencoder_error                 S M    mlp_neuron               A
online_residual_mlp_autoencoder_error        S D    residual_stream_channel  A
online_residual_attention_autoencoder_error  S D    residual_stream_channel  A
"""

# Derived scalars keyed by layer None: those computed from resid.post_emb, resid.ln_f.scale or the
# logits (engine.md §2.3, §3.3, §3.7; token_out_edge_attribution reads resid.post_emb too).
_DSTS_WITHOUT_LAYERS = frozenset(
    {
        "logits",
        "resid_post_embedding",
        "resid_final_layer_norm_scale",
        "resid_post_embedding_norm",
        "resid_post_embedding_proj_to_final_residual_grad",
        "resid_post_embedding_proj_to_final_activation_residual_grad",
        "token_attribution",
        "token_out_edge_attribution",
        "vocab_token_write_to_input_direction",
        "always_one",
    }
)

# Derived scalars with a BACKWARD variant: the raw hook values and the few others whose "passes"
# column in engine.md §3 says F,B, plus the two that silently return their FORWARD value (§3.1).
_DSTS_WITH_BACKWARD = frozenset(
    {
        "logits",
        "resid_post_embedding",
        "mlp_pre_act",
        "mlp_post_act",
        "resid_delta_mlp",
        "resid_post_mlp",
        "attn_query",
        "attn_key",
        "attn_value",
        "attn_qk_logits",
        "attn_qk_probs",
        "attn_weighted_sum_of_values",
        "resid_delta_attn",
        "resid_post_attn",
        "resid_final_layer_norm_scale",
        "attn_input_layer_norm_scale",
        "mlp_input_layer_norm_scale",
        "unflattened_attn_write_norm",
        "previous_layer_resid_post_mlp",
        "always_one",
        "vocab_token_write_to_input_direction",
        "online_autoencoder_latent",
        "online_mlp_autoencoder_latent",
        "online_attention_autoencoder_latent",
        "online_mlp_autoencoder_error",
        "online_residual_mlp_autoencoder_error",
        "online_residual_attention_autoencoder_error",
    }
)

# Columns: wire value, axes, node type, flags (G = forward value needs a backward pass,
# A = autoencoder). Same rows and order as DerivedScalarType.
_DST_TABLE = """
logits                                                                S V       vocab_token                   --
resid_post_embedding                                                  S D       residual_stream_channel       --
mlp_pre_act                                                           S M       mlp_neuron                    --
mlp_post_act                                                          S M       mlp_neuron                    --
resid_delta_mlp                                                       S D       residual_stream_channel       --
resid_post_mlp                                                        S D       residual_stream_channel       --
attn_query                                                            S H QK    qk_channel                    --
attn_key                                                              A H QK    qk_channel                    --
attn_value                                                            A H VC    v_channel                     --
attn_qk_logits                                                        S A H     attention_head                --
attn_qk_probs                                                         S A H     attention_head                --
attn_weighted_sum_of_values                                           S H VC    v_channel                     --
resid_delta_attn                                                      S D       residual_stream_channel       --
resid_post_attn                                                       S D       residual_stream_channel       --
resid_final_layer_norm_scale                                          S 1       layer                         --
attn_input_layer_norm_scale                                           S 1       layer                         --
mlp_input_layer_norm_scale                                            S 1       layer                         --
online_autoencoder_latent                                             S L       autoencoder_latent            -A
attn_write_norm                                                       S H       attention_head                --
flattened_attn_post_softmax                                           S H       attention_head                --
attn_act_times_grad                                                   S H       attention_head                G-
resid_delta_mlp_from_mlp_post_act                                     S D       residual_stream_channel       --
mlp_write_norm                                                        S M       mlp_neuron                    --
mlp_act_times_grad                                                    S M       mlp_neuron                    G-
autoencoder_latent                                                    S L       autoencoder_latent            -A
autoencoder_write_norm                                                S L       autoencoder_latent            -A
mlp_write_to_final_residual_grad                                      S M       mlp_neuron                    G-
attn_write_norm_per_sequence_token                                    S H       attention_head                --
attn_write_to_final_residual_grad_per_sequence_token                  S H       attention_head                G-
attn_act_times_grad_per_sequence_token                                S H       attention_head                G-
resid_post_embedding_norm                                             S 1       layer                         --
resid_post_mlp_norm                                                   S 1       layer                         --
mlp_layer_write_norm                                                  S 1       layer                         --
resid_post_attn_norm                                                  S 1       layer                         --
attn_layer_write_norm                                                 S 1       layer                         --
resid_post_embedding_proj_to_final_residual_grad                      S 1       layer                         G-
resid_post_mlp_proj_to_final_residual_grad                            S 1       layer                         G-
mlp_layer_write_to_final_residual_grad                                S 1       layer                         G-
resid_post_attn_proj_to_final_residual_grad                           S 1       layer                         G-
attn_layer_write_to_final_residual_grad                               S 1       layer                         G-
unflattened_attn_act_times_grad                                       S A H     attention_head                G-
unflattened_attn_write_norm                                           S A H     attention_head                --
unflattened_attn_write_to_final_residual_grad                         S A H     attention_head                G-
attn_write_to_final_residual_grad                                     S H       attention_head                G-
online_autoencoder_act_times_grad                                     S L       autoencoder_latent            GA
online_autoencoder_write_norm                                         S L       autoencoder_latent            -A
online_autoencoder_write_to_final_residual_grad                       S L       autoencoder_latent            GA
online_mlp_autoencoder_error                                          S M       mlp_neuron                    -A
online_residual_mlp_autoencoder_error                                 S D       residual_stream_channel       -A
online_residual_attention_autoencoder_error                           S D       residual_stream_channel       -A
online_mlp_autoencoder_error_act_times_grad                           S M       mlp_neuron                    GA
online_mlp_autoencoder_error_write_norm                               S M       mlp_neuron                    -A
online_mlp_autoencoder_error_write_to_final_residual_grad             S M       mlp_neuron                    GA
attn_write                                                            S A H D   residual_stream_channel       --
attn_write_sum_heads                                                  S A D     residual_stream_channel       --
mlp_write                                                             S M D     residual_stream_channel       --
online_autoencoder_write                                              S L D     residual_stream_channel       -A
attn_weighted_value                                                   S A H VC  v_channel                     --
previous_layer_resid_post_mlp                                         S D       residual_stream_channel       --
mlp_write_to_final_activation_residual_grad                           S M       mlp_neuron                    --
unflattened_attn_write_to_final_activation_residual_grad              S A H     attention_head                --
online_autoencoder_write_to_final_activation_residual_grad            S L       autoencoder_latent            -A
resid_post_embedding_proj_to_final_activation_residual_grad           S 1       layer                         --
autoencoder_latent_grad_wrt_residual_input                            S D       residual_stream_channel       -A
autoencoder_latent_grad_wrt_mlp_post_act_input                        S M       mlp_neuron                    -A
attn_write_to_latent                                                  S A H     attention_head                -A
attn_write_to_latent_summed_over_heads                                S A 1     layer                         -A
flattened_attn_write_to_latent_summed_over_heads                      S 1       layer                         -A
flattened_attn_write_to_latent_summed_over_heads_batched              S L       autoencoder_latent            -A
attn_write_to_latent_per_sequence_token                               S H       attention_head                -A
attn_write_to_latent_per_sequence_token_batched                       S H L     autoencoder_latent            -A
token_attribution                                                     S 1       layer                         G-
single_node_write                                                     S D       residual_stream_channel       --
grad_of_single_subnode_attribution                                    S D       residual_stream_channel       G-
attn_out_edge_attribution                                             S A H     attention_head                G-
mlp_out_edge_attribution                                              S M       mlp_neuron                    G-
online_autoencoder_out_edge_attribution                               S L       autoencoder_latent            GA
attn_query_in_edge_attribution                                        S A H     attention_head                G-
attn_key_in_edge_attribution                                          S A H     attention_head                G-
attn_value_in_edge_attribution                                        S A H     attention_head                G-
mlp_in_edge_attribution                                               S M       mlp_neuron                    G-
online_autoencoder_in_edge_attribution                                S L       autoencoder_latent            GA
token_out_edge_attribution                                            S 1       layer                         G-
single_node_write_to_final_residual_grad                              S 1       layer                         G-
vocab_token_write_to_input_direction                                  S V       vocab_token                   --
always_one                                                            S 1       layer                         --
attn_query_in_edge_activation                                         S A H     attention_head                --
attn_key_in_edge_activation                                           S A H     attention_head                --
mlp_in_edge_activation                                                S M       mlp_neuron                    --
online_autoencoder_in_edge_activation                                 S L       autoencoder_latent            -A
mlp_autoencoder_latent                                                S L       mlp_autoencoder_latent        -A
mlp_autoencoder_write_norm                                            S L       mlp_autoencoder_latent        -A
online_mlp_autoencoder_latent                                         S L       mlp_autoencoder_latent        -A
online_mlp_autoencoder_write                                          S L D     mlp_autoencoder_latent        -A
online_mlp_autoencoder_write_norm                                     S L       mlp_autoencoder_latent        -A
online_mlp_autoencoder_act_times_grad                                 S L       mlp_autoencoder_latent        GA
online_mlp_autoencoder_write_to_final_residual_grad                   S L       mlp_autoencoder_latent        GA
online_mlp_autoencoder_write_to_final_activation_residual_grad        S L       mlp_autoencoder_latent        -A
attention_autoencoder_latent                                          S L       attention_autoencoder_latent  -A
attention_autoencoder_write_norm                                      S L       attention_autoencoder_latent  -A
online_attention_autoencoder_latent                                   S L       attention_autoencoder_latent  -A
online_attention_autoencoder_write                                    S L D     attention_autoencoder_latent  -A
online_attention_autoencoder_write_norm                               S L       attention_autoencoder_latent  -A
online_attention_autoencoder_act_times_grad                           S L       attention_autoencoder_latent  GA
online_attention_autoencoder_write_to_final_residual_grad             S L       attention_autoencoder_latent  GA
online_attention_autoencoder_write_to_final_activation_residual_grad  S L       attention_autoencoder_latent  -A
"""


def _parse_dims(text: str) -> tuple[Dimension, ...]:
    return tuple(_DIM_ABBREVIATIONS[a] for a in text.split())


def _split_row(row: str) -> tuple[str, str, str, str]:
    """A table row is: value, one or more axis abbreviations, node type, flags."""
    words = row.split()
    return words[0], " ".join(words[1:-2]), words[-2], words[-1]


def _build_location_info() -> dict[ActivationLocationType, LocationInfo]:
    table = {}
    for row in _LOCATION_TABLE.strip().splitlines():
        value, dims, node_type, flags = _split_row(row)
        table[ActivationLocationType(value)] = LocationInfo(
            dims=_parse_dims(dims),
            node_type=NodeType(node_type),
            has_no_layers="N" in flags,
            hookable="X" not in flags,
            autoencoder="A" in flags,
        )
    return table


def _build_dst_info() -> dict[DerivedScalarType, DstInfo]:
    table = {}
    for row in _DST_TABLE.strip().splitlines():
        value, dims, node_type, flags = _split_row(row)
        table[DerivedScalarType(value)] = DstInfo(
            dims=_parse_dims(dims),
            node_type=NodeType(node_type),
            needs_grad_for_forward="G" in flags,
            autoencoder="A" in flags,
            has_no_layers=value in _DSTS_WITHOUT_LAYERS,
            supports_backward=value in _DSTS_WITH_BACKWARD,
        )
    return table


LOCATION_INFO: dict[ActivationLocationType, LocationInfo] = _build_location_info()
DST_INFO: dict[DerivedScalarType, DstInfo] = _build_dst_info()

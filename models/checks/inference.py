"""The checks of ``models.checks`` that concern the inference spec and TDB's own fields.

Each function takes the parsed object, the wire path of that object and the ``Shape`` (model sizes
and prompt length), and raises an ActqError naming the field; see ``models.checks`` for the
status-code policy. Processing-spec checks are in ``models.checks.specs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from models.checks.autoencoders import check_ae_location, check_latent_node, node_type_autoencoder
from models.errors import RequestValidationError, UnsupportedError
from models.wire.enums import (
    AttentionTraceType,
    ComponentTypeForAttention,
    ComponentTypeForMlp,
    Dimension,
    LossFnName,
    NodeType,
    PassType,
)
from models.wire.protocol import (
    AblationSpec,
    LossFnConfig,
    MirroredNodeIndex,
    MirroredTraceConfig,
    TdbRequestSpec,
)
from models.wire.shapes import LOCATION_INFO

_EXCLUDED_STRINGS_FILE = (
    Path(__file__).resolve().parents[1] / "data" / "least_common_gpt2_token_strings.json"
)


@cache
def excluded_token_count() -> int:
    """How many of TDB's least-common GPT-2 strings top-token lists leave out (596)."""
    return len(json.loads(_EXCLUDED_STRINGS_FILE.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class Shape:
    """What the checks need to know about the model and one prompt."""

    meta: Any  # models.model_meta.ModelMeta, or anything with its shape attributes
    n_tokens: int
    autoencoders: Any = None  # models.autoencoders.ServedAutoencoders, or None

    def size(self, dim: Dimension) -> int | None:
        """The size of an axis, or None for the autoencoder axes (not offered here)."""
        m = self.meta
        return {
            Dimension.SEQUENCE_TOKENS: self.n_tokens,
            Dimension.ATTENDED_TO_SEQUENCE_TOKENS: self.n_tokens,
            Dimension.MAX_CONTEXT_LENGTH: m.n_ctx,
            Dimension.RESIDUAL_STREAM_CHANNELS: m.d_model,
            Dimension.VOCAB_SIZE: m.vocab_size,
            Dimension.ATTN_HEADS: m.n_heads,
            Dimension.QUERY_AND_KEY_CHANNELS: m.d_head,
            Dimension.VALUE_CHANNELS: m.d_head,
            Dimension.MLP_ACTS: m.d_mlp,
            Dimension.LAYERS: m.n_layers,
            Dimension.SINGLETON: 1,
        }.get(dim)

    @property
    def usable_vocab_size(self) -> int:
        """Vocabulary tokens a top-token list can show: all but TDB's excluded strings (which
        are only excluded from GPT-2's vocabulary)."""
        if self.meta.vocab_size != 50257:
            return self.meta.vocab_size
        return self.meta.vocab_size - excluded_token_count()


# -- indices ---------------------------------------------------------------------------------


def check_index(value: int, dim: Dimension, shape: Shape, path: str) -> None:
    """An index into one axis: in ``[-size, size)``, counting from the end when negative."""
    size = shape.size(dim)
    if size is not None and not -size <= value < size:
        what = "the prompt's" if dim.is_sequence else "axis"
        raise RequestValidationError(
            f"index {value} is out of range for {what} {dim.value} of size {size} "
            f"(valid: {-size} to {size - 1})",
            path=path,
        )


def check_layer(layer_index: int, shape: Shape, path: str) -> None:
    n = shape.meta.n_layers
    if not 0 <= layer_index < n:
        raise RequestValidationError(
            f"layer index {layer_index} is out of range: {shape.meta.name} has {n} layers "
            f"(0 to {n - 1})",
            path=path,
        )


def check_node_kind(node_type: NodeType, path: str, verb: str, shape: Shape | None = None) -> None:
    """Ablated and traced nodes are MLP neurons, attention heads or latents of a loaded AE."""
    if node_type in _LATENT_TYPES:
        node_type_autoencoder(node_type.value, path, shape)
        return
    if node_type.is_autoencoder:
        raise UnsupportedError(f"{node_type.value} nodes cannot be {verb}", path=path)
    if node_type not in (NodeType.MLP_NEURON, NodeType.ATTENTION_HEAD):
        raise RequestValidationError(
            f"{node_type.value} nodes cannot be {verb}: only mlp_neuron and attention_head nodes can",
            path=path,
        )


_LATENT_TYPES = (
    NodeType.AUTOENCODER_LATENT,
    NodeType.MLP_AUTOENCODER_LATENT,
    NodeType.ATTENTION_AUTOENCODER_LATENT,
)
_LATENT_AXES = (Dimension.SEQUENCE_TOKENS, Dimension.AUTOENCODER_LATENTS)
_NODE_AXES = {
    **dict.fromkeys(_LATENT_TYPES, _LATENT_AXES),
    NodeType.MLP_NEURON: (Dimension.SEQUENCE_TOKENS, Dimension.MLP_ACTS),
    NodeType.ATTENTION_HEAD: (
        Dimension.SEQUENCE_TOKENS,
        Dimension.ATTENDED_TO_SEQUENCE_TOKENS,
        Dimension.ATTN_HEADS,
    ),
}


# -- ablations -------------------------------------------------------------------------------


def check_ablation(ablation: AblationSpec, path: str, shape: Shape) -> None:
    check_activation_index(ablation.index, f"{path}.index", shape)


WITHIN_LAYER_GRAD_LOCATIONS = ("mlp.pre_act", "mlp.post_act", "attn.qk_logits", "attn.qk_probs")


def check_within_layer_grad_index(index, path: str, shape: Shape) -> None:
    """activationIndexForWithinLayerGrad: a node whose gradient direction the DSTs use (§6.6)."""
    location = index.activation_location_type
    if LOCATION_INFO[location].autoencoder and location.value != "online_autoencoder_latent":
        raise RequestValidationError(
            f"a within-layer gradient at an autoencoder is defined at online_autoencoder_latent "
            f"only (TDB fails on {location.value})",
            path=f"{path}.activationLocationType",
        )
    if (
        not LOCATION_INFO[location].autoencoder
        and location.value not in WITHIN_LAYER_GRAD_LOCATIONS
    ):
        raise RequestValidationError(
            f"a within-layer gradient is defined at {', '.join(WITHIN_LAYER_GRAD_LOCATIONS)}; "
            f"not at {location.value}",
            path=f"{path}.activationLocationType",
        )
    if index.pass_type.value != "forward":
        raise RequestValidationError(
            "the traced activation must be a forward one", path=f"{path}.passType"
        )
    if index.layer_index is None:
        raise RequestValidationError(
            "give the layer of the traced activation", path=f"{path}.layerIndex"
        )
    check_activation_index(index, path, shape)


def check_activation_index(index, path: str, shape: Shape) -> None:
    location = index.activation_location_type
    info = LOCATION_INFO[location]
    if info.autoencoder:
        check_ae_location(index, path, shape)
    if not info.hookable:
        raise RequestValidationError(
            f"{location.value} cannot be hooked (TDB declares it but has no hook point for it)",
            path=f"{path}.activationLocationType",
        )
    if location.value in getattr(shape.meta, "absent_locations", ()):
        raise RequestValidationError(
            f"{location.value} does not exist on {shape.meta.name} (a {shape.meta.family} model "
            "with parallel attention and MLP has no residual between them)",
            path=f"{path}.activationLocationType",
        )
    if index.layer_index is not None:
        if info.has_no_layers:
            raise RequestValidationError(
                f"{location.value} exists once per model: its layerIndex must be null",
                path=f"{path}.layerIndex",
            )
        check_layer(index.layer_index, shape, f"{path}.layerIndex")
    if len(index.tensor_indices) != len(info.dims):
        axes = ", ".join(d.value for d in info.dims)
        raise RequestValidationError(
            f"{location.value} has {len(info.dims)} axes ({axes}); "
            f"got {len(index.tensor_indices)} tensor indices",
            path=f"{path}.tensorIndices",
        )
    for k, (value, dim) in enumerate(zip(index.tensor_indices, info.dims, strict=True)):
        if value != "All":
            check_index(value, dim, shape, f"{path}.tensorIndices.{k}")


def check_ablated_node(node: MirroredNodeIndex, path: str, shape: Shape) -> None:
    """A TDB node ablation: its token (first) and neuron or head (last) index, and its layer."""
    check_node_kind(node.node_type, f"{path}.nodeType", "ablated", shape)
    if node.node_type in _LATENT_TYPES:
        check_latent_node(node, path, shape)
    indices = node.tensor_indices
    if not indices:
        raise RequestValidationError(
            "an ablated node needs a token and a neuron or head index", path=f"{path}.tensorIndices"
        )
    last = len(indices) - 1
    for k, dim in ((0, Dimension.SEQUENCE_TOKENS), (last, _NODE_AXES[node.node_type][-1])):
        if indices[k] is None:
            raise RequestValidationError(
                "the first (token) and last (neuron or head) tensor indices of an ablated node "
                "must not be null",
                path=f"{path}.tensorIndices.{k}",
            )
        check_index(indices[k], dim, shape, f"{path}.tensorIndices.{k}")
    if node.layer_index is not None:  # null ablates the node in every layer (TDB quirk)
        check_layer(node.layer_index, shape, f"{path}.layerIndex")


# -- losses ----------------------------------------------------------------------------------


def check_loss_structure(loss: LossFnConfig, path: str) -> None:
    """The rules of protocol.md §5.12 that need no tokenizer."""
    if loss.name is LossFnName.ZERO:
        return
    if not loss.target_tokens:
        missing = "null" if loss.target_tokens is None else "empty"
        raise RequestValidationError(
            f"the {loss.name.value} loss needs target tokens; targetTokens is {missing}",
            path=f"{path}.targetTokens",
        )
    if loss.name is not LossFnName.LOGIT_DIFF and loss.distractor_tokens is not None:
        raise RequestValidationError(
            f"the {loss.name.value} loss takes no distractor tokens: distractorTokens must be null",
            path=f"{path}.distractorTokens",
        )


def check_loss_strings(loss: LossFnConfig, path: str, tokenizer: Any) -> None:
    """Each target, then each distractor, must be exactly one token (TDB's 400)."""
    if loss.name is LossFnName.ZERO:
        return
    for key, strings in (
        ("targetTokens", loss.target_tokens),
        ("distractorTokens", loss.distractor_tokens),
    ):
        for k, s in enumerate(strings or ()):
            tokenizer.single_token_id(s, path=f"{path}.{key}.{k}")


# -- traces ----------------------------------------------------------------------------------

TraceLevel = tuple[MirroredNodeIndex, AttentionTraceType | None, str]


def trace_levels(trace: MirroredTraceConfig, path: str) -> list[TraceLevel]:
    """A trace configuration and its downstream chain, each with its wire path."""
    levels = []
    current: MirroredTraceConfig | None = trace
    while current is not None:
        levels.append((current.node_index, current.attention_trace_type, path))
        current = current.downstream_trace_config
        path = f"{path}.downstreamTraceConfig"
    return levels


def check_trace_levels(levels: list[TraceLevel], shape: Shape) -> None:
    """TDB's trace rules (protocol.md §3.1, engine.md §6.1) and the traced nodes' indices."""
    for k, (node, trace_type, path) in enumerate(levels):
        if k > 0 and levels[k - 1][1] is not AttentionTraceType.V:
            raise RequestValidationError(
                "a downstream node can only be traced below an attention head traced through V",
                path=path,
            )
        if k > 0 and node.node_type in _LATENT_TYPES:
            raise RequestValidationError(
                "a trace through V to a downstream autoencoder latent fails in TDB (it looks the "
                "AE up by the upstream head's type)",
                path=path,
            )
        if k > 0 and trace_type is AttentionTraceType.V:
            raise RequestValidationError(
                "a downstream node cannot itself be traced through V",
                path=f"{path}.attentionTraceType",
            )
        check_traced_node(node, trace_type, path, shape)


def check_traced_node(
    node: MirroredNodeIndex, trace_type: AttentionTraceType | None, path: str, shape: Shape
) -> None:
    check_node_kind(node.node_type, f"{path}.nodeIndex.nodeType", "traced", shape)
    if node.node_type in _LATENT_TYPES:
        check_latent_node(node, f"{path}.nodeIndex", shape)
    if node.pass_type is not PassType.FORWARD:
        raise RequestValidationError(
            "a traced node's passType must be forward", path=f"{path}.nodeIndex.passType"
        )
    if node.layer_index is None:
        raise RequestValidationError(
            "a traced node needs a layerIndex", path=f"{path}.nodeIndex.layerIndex"
        )
    check_layer(node.layer_index, shape, f"{path}.nodeIndex.layerIndex")
    axes = _NODE_AXES[node.node_type]
    if len(node.tensor_indices) != len(axes):
        raise RequestValidationError(
            f"a traced {node.node_type.value} node has {len(axes)} tensor indices "
            f"({', '.join(d.value for d in axes)}); got {len(node.tensor_indices)}",
            path=f"{path}.nodeIndex.tensorIndices",
        )
    for k, (value, dim) in enumerate(zip(node.tensor_indices, axes, strict=True)):
        if value is None:
            raise RequestValidationError(
                "a traced node's tensor indices must all be integers",
                path=f"{path}.nodeIndex.tensorIndices.{k}",
            )
        check_index(value, dim, shape, f"{path}.nodeIndex.tensorIndices.{k}")
    is_attention = node.node_type is NodeType.ATTENTION_HEAD
    if is_attention and trace_type is None:
        raise RequestValidationError(
            "attention_trace_type must be specified for attention activations (Q, K, QK or V)",
            path=f"{path}.attentionTraceType",
        )
    if not is_attention and trace_type is not None:
        raise RequestValidationError(
            f"attentionTraceType applies to attention heads only; must be null for {node.node_type.value}",
            path=f"{path}.attentionTraceType",
        )


# -- TDB's own fields ------------------------------------------------------------------------


def check_tdb_spec(spec: TdbRequestSpec, path: str, shape: Shape) -> None:
    """The fields of one TdbRequestSpec, before it is converted (protocol.md §6)."""
    if spec.component_type_for_mlp is ComponentTypeForMlp.AUTOENCODER_LATENT:
        node_type_autoencoder("mlp_autoencoder_latent", f"{path}.componentTypeForMlp", shape)
    if spec.component_type_for_attention is ComponentTypeForAttention.AUTOENCODER_LATENT:
        node_type_autoencoder(
            "attention_autoencoder_latent", f"{path}.componentTypeForAttention", shape
        )
    if spec.top_and_bottom_k_for_node_table < 1:
        raise RequestValidationError(
            "topAndBottomKForNodeTable must be at least 1", path=f"{path}.topAndBottomKForNodeTable"
        )
    for i, ablation in enumerate(spec.node_ablations or ()):
        check_ablated_node(ablation.node_index, f"{path}.nodeAblations.{i}.nodeIndex", shape)
    upstream, downstream = spec.upstream_node_to_trace, spec.downstream_node_to_trace
    if upstream is None and downstream is not None:
        raise RequestValidationError(
            "downstreamNodeToTrace needs an upstreamNodeToTrace",
            path=f"{path}.downstreamNodeToTrace",
        )
    levels = [
        (node.node_index, node.attention_trace_type, f"{path}.{key}")
        for key, node in (("upstreamNodeToTrace", upstream), ("downstreamNodeToTrace", downstream))
        if node is not None
    ]
    check_trace_levels(levels, shape)

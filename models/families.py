"""What each model family's config.json says about its shape, and what the family lacks
(families.md §1.1, §3, §4); pure Python, so the API can check requests without torch.

A family is one row of `FAMILIES`: how to read its sizes from config.json and which hook points
and derived scalars it does not have. The engine's adapters (worker/engine/families/) read the
same config for the rest (weights, rotary, windows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from models.errors import UnsupportedError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# A parallel block has no residual between its attention and its MLP.
PARALLEL_ABSENT_POINTS = ("resid.post_attn",)
PARALLEL_ABSENT_DSTS = (
    "resid_post_attn",
    "resid_post_attn_norm",
    "resid_post_attn_proj_to_final_residual_grad",
)


@dataclass(frozen=True)
class FamilyShape:
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    n_ctx: int
    config_vocab_size: int
    activation: str
    eps: float
    parallel: bool = False

    @property
    def absent_locations(self) -> tuple[str, ...]:
        return PARALLEL_ABSENT_POINTS if self.parallel else ()

    @property
    def absent_dsts(self) -> tuple[str, ...]:
        return PARALLEL_ABSENT_DSTS if self.parallel else ()


def _gpt2(config: dict) -> FamilyShape:
    d, h = int(config["n_embd"]), int(config["n_head"])
    return FamilyShape(
        family="gpt2",
        n_layers=int(config["n_layer"]),
        n_heads=h,
        n_kv_heads=h,
        d_model=d,
        d_head=d // h,
        d_mlp=int(config.get("n_inner") or 4 * d),
        n_ctx=int(config.get("n_positions") or config.get("n_ctx") or 1024),
        config_vocab_size=int(config.get("vocab_size", 50257)),
        activation=str(config.get("activation_function", "gelu_new")),
        eps=float(config.get("layer_norm_epsilon", 1e-5)),
    )


def _gpt_neox(config: dict) -> FamilyShape:
    d, h = int(config["hidden_size"]), int(config["num_attention_heads"])
    return FamilyShape(
        family="gpt_neox",
        n_layers=int(config["num_hidden_layers"]),
        n_heads=h,
        n_kv_heads=h,
        d_model=d,
        d_head=d // h,
        d_mlp=int(config.get("intermediate_size") or 4 * d),
        n_ctx=int(config.get("max_position_embeddings", 2048)),
        config_vocab_size=int(config["vocab_size"]),
        activation=str(config.get("hidden_act", "gelu")),
        eps=float(config.get("layer_norm_eps", 1e-5)),
        parallel=bool(config.get("use_parallel_residual", True)),
    )


def _llama(config: dict) -> FamilyShape:
    d, h = int(config["hidden_size"]), int(config["num_attention_heads"])
    return FamilyShape(
        family=str(config["model_type"]),
        n_layers=int(config["num_hidden_layers"]),
        n_heads=h,
        n_kv_heads=int(config.get("num_key_value_heads") or h),
        d_model=d,
        d_head=int(config.get("head_dim") or d // h),
        d_mlp=int(config["intermediate_size"]),
        n_ctx=int(config.get("max_position_embeddings", 2048)),
        config_vocab_size=int(config["vocab_size"]),
        activation=str(config.get("hidden_act", "silu")),
        eps=float(config.get("rms_norm_eps", 1e-6)),
    )


# config.json model_type -> how to read its shape
FAMILIES = {
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _llama,
}
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish", "relu")


def family_shape(config: dict, source: str) -> FamilyShape:
    """The shape of a supported config, or a 422 naming what is not supported."""
    model_type = config.get("model_type")
    reader = FAMILIES.get(model_type)
    if reader is None:
        raise UnsupportedError(
            f"model {source!r} has model_type {model_type!r}; supported: {', '.join(FAMILIES)}",
            "model_type",
        )
    try:
        shape = reader(config)
    except KeyError as exc:
        raise UnsupportedError(f"model {source!r}: config.json lacks {exc}", str(exc)) from None
    if shape.activation not in ACTIVATIONS:
        field = "activation_function" if model_type == "gpt2" else "hidden_act"
        raise UnsupportedError(
            f"model {source!r}: activation {shape.activation!r} is not supported", field
        )
    if shape.n_heads % shape.n_kv_heads:
        raise UnsupportedError(
            f"model {source!r}: num_attention_heads is not a multiple of num_key_value_heads",
            "num_key_value_heads",
        )
    if model_type != "gpt2":
        rope_settings(config, source)
    return shape


def rope_settings(config: dict, source: str = "model") -> tuple[float, str, dict]:
    """(θ, rope_type, scaling parameters) from a v4 or v5 config; 422 for unsupported types."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    theta = config.get("rope_theta") or config.get("rotary_emb_base") or params.get("rope_theta")
    rope_type = (
        scaling.get("rope_type") or scaling.get("type") or params.get("rope_type") or "default"
    )
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedError(
            f"model {source!r}: rope type {rope_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})",
            "rope_scaling",
        )
    return float(theta or 10000.0), rope_type, {**params, **scaling}


def rotary_dim(config: dict, d_head: int) -> int:
    """R: the head width for the Llama family, floor(e * rotary_pct) for GPT-NeoX."""
    if config.get("model_type") != "gpt_neox":
        return d_head
    params = config.get("rope_parameters") or {}
    pct = config.get("rotary_pct", params.get("partial_rotary_factor", 0.25))
    return int(d_head * float(pct))


def sliding_windows(config: dict, n_layers: int) -> tuple[int | None, ...]:
    """Per layer the sliding window W, or None (families.md §1.1)."""
    model_type = config.get("model_type")
    window = config.get("sliding_window")
    if model_type == "mistral" and window:
        return (int(window),) * n_layers
    if model_type == "qwen2" and window and config.get("use_sliding_window"):
        types = config.get("layer_types")
        if types is None:
            start = int(config.get("max_window_layers", n_layers))
            types = [
                "sliding_attention" if i >= start else "full_attention" for i in range(n_layers)
            ]
        return tuple(int(window) if t == "sliding_attention" else None for t in types)
    return (None,) * n_layers


@cache
def tokenizer_vocab_size(path: str) -> int:
    """V = 1 + the largest id of tokenizer.json's vocabulary, added tokens included."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    vocab = (data.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [int(t["id"]) for t in data.get("added_tokens") or ()]
    return max(ids) + 1

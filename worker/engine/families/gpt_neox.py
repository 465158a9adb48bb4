"""GPT-NeoX (Pythia; families.md §1.2): LayerNorm, partial rotary, fused per-head-interleaved
Q/K/V, ungated MLP, parallel (default) or sequential residual, untied unembedding. A parallel
block has no `resid.post_attn`."""

from __future__ import annotations

import torch

from models.families import FamilyShape

from .base import LayerWeights, ModelWeights
from .common import StateDict, rotary_architecture, unembedding

PREFIX = "gpt_neox."


def _deinterleave(x: torch.Tensor, h: int, e: int) -> torch.Tensor:
    """Rows [q_0 | k_0 | v_0 | q_1 | ...] (HF's fused layout) to [Q | K | V], head-major."""
    rest = x.shape[1:]
    return x.reshape(h, 3, e, *rest).transpose(0, 1).reshape(3 * h * e, *rest)


def build_weights(
    raw: dict[str, torch.Tensor], config: dict, shape: FamilyShape, vocab: int, device
) -> ModelWeights:
    sd = StateDict(raw, device)
    arch = rotary_architecture(config, shape, "layer_norm", gated=False, device=device)
    layers = [_layer(sd, f"{PREFIX}layers.{i}.", shape) for i in range(shape.n_layers)]
    w_e = sd.get(PREFIX + "embed_in.weight")[:vocab].contiguous()
    tied = bool(config.get("tie_word_embeddings", False))
    w_u = unembedding(sd, ("embed_out.weight", "lm_head.weight"), w_e, tied, vocab)
    return ModelWeights(
        W_E=w_e,
        W_P=None,
        layers=layers,
        lnf_g=sd.get(PREFIX + "final_layer_norm.weight"),
        lnf_b=sd.get(PREFIX + "final_layer_norm.bias"),
        ln_eps=shape.eps,
        arch=arch,
        W_U_=w_u,
    )


def _layer(sd: StateDict, p: str, shape: FamilyShape) -> LayerWeights:
    h, e, d, f = shape.n_heads, shape.d_head, shape.d_model, shape.d_mlp
    a, m = p + "attention.", p + "mlp."
    qkv = sd.get(a + "query_key_value.weight")  # [3d, d]
    b_qkv = sd.bias(a + "query_key_value", 3 * h * e)
    return LayerWeights(
        ln1_g=sd.get(p + "input_layernorm.weight"),
        ln1_b=sd.get(p + "input_layernorm.bias"),
        w_qkv=_deinterleave(qkv, h, e).T.contiguous(),
        b_qkv=_deinterleave(b_qkv, h, e).contiguous(),
        w_o=sd.linear(a + "dense"),
        b_o=sd.bias(a + "dense", d),
        ln2_g=sd.get(p + "post_attention_layernorm.weight"),
        ln2_b=sd.get(p + "post_attention_layernorm.bias"),
        w_in=sd.linear(m + "dense_h_to_4h"),
        b_in=sd.bias(m + "dense_h_to_4h", f),
        w_out=sd.linear(m + "dense_4h_to_h"),
        b_out=sd.bias(m + "dense_4h_to_h", d),
        n_heads=h,
        n_kv_heads=h,
        d_head_=e,
    )

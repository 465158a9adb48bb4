"""The Llama family (llama, mistral, qwen2; families.md §1.2): RMSNorm, rotary on the whole head,
grouped-query attention, gated MLP, biases where the config has them, tied or untied unembedding,
sliding windows (Mistral, Qwen2). Every hook point exists."""

from __future__ import annotations

import torch

from models.families import FamilyShape

from .base import LayerWeights, ModelWeights
from .common import StateDict, rotary_architecture, unembedding

PREFIX = "model."


def build_weights(
    raw: dict[str, torch.Tensor], config: dict, shape: FamilyShape, vocab: int, device
) -> ModelWeights:
    sd = StateDict(raw, device)
    arch = rotary_architecture(config, shape, "rms_norm", gated=True, device=device)
    h, h_kv, e, d = shape.n_heads, shape.n_kv_heads, shape.d_head, shape.d_model
    layers = [
        _layer(sd, f"{PREFIX}layers.{i}.", h, h_kv, e, d, shape.d_mlp)
        for i in range(shape.n_layers)
    ]
    w_e = sd.get(PREFIX + "embed_tokens.weight")[:vocab].contiguous()
    tied = bool(config.get("tie_word_embeddings", False)) or not sd.has("lm_head.weight")
    return ModelWeights(
        W_E=w_e,
        W_P=None,
        layers=layers,
        lnf_g=sd.get(PREFIX + "norm.weight"),
        lnf_b=None,
        ln_eps=shape.eps,
        arch=arch,
        W_U_=unembedding(sd, ("lm_head.weight",), w_e, tied, vocab),
    )


def _layer(sd: StateDict, p: str, h: int, h_kv: int, e: int, d: int, f: int) -> LayerWeights:
    a, m = p + "self_attn.", p + "mlp."
    w_qkv = torch.cat([sd.linear(a + n) for n in ("q_proj", "k_proj", "v_proj")], dim=1)
    b_qkv = torch.cat(
        [
            sd.bias(a + "q_proj", h * e),
            sd.bias(a + "k_proj", h_kv * e),
            sd.bias(a + "v_proj", h_kv * e),
        ]
    )
    return LayerWeights(
        ln1_g=sd.get(p + "input_layernorm.weight"),
        ln1_b=None,
        w_qkv=w_qkv.contiguous(),
        b_qkv=b_qkv,
        w_o=sd.linear(a + "o_proj"),
        b_o=sd.bias(a + "o_proj", d),
        ln2_g=sd.get(p + "post_attention_layernorm.weight"),
        ln2_b=None,
        w_in=sd.linear(m + "gate_proj"),
        b_in=sd.bias(m + "gate_proj", f),
        w_out=sd.linear(m + "down_proj"),
        b_out=sd.bias(m + "down_proj", d),
        n_heads=h,
        n_kv_heads=h_kv,
        d_head_=e,
        w_up=sd.linear(m + "up_proj"),
        b_up=sd.bias(m + "up_proj", f),
    )

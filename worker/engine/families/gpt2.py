"""GPT-2 (the reference, engine.md §1.2): its checkpoint in the engine's canonical layout.

GPT-2's `c_attn` already is the canonical fused [Q | K | V] matrix ([in, out], Conv1D), so the
weights are used as stored; learned positions, LayerNorm, tied unembedding, every hook point.
"""

from __future__ import annotations

import torch

from .base import Architecture, LayerWeights, ModelWeights
from .decoder import forward

__all__ = ["GPT2Weights", "LayerWeights", "forward", "architecture", "build_weights"]

PREFIX = "transformer."
ABSENT_POINTS: frozenset[str] = frozenset()


def architecture(config: dict) -> Architecture:
    d, n_heads = int(config["n_embd"]), int(config["n_head"])
    return Architecture(
        family="gpt2",
        n_heads=n_heads,
        n_kv_heads=n_heads,
        d_head=d // n_heads,
        norm="layer_norm",
        eps=float(config.get("layer_norm_epsilon", 1e-5)),
        activation=str(config.get("activation_function", "gelu_new")),
    )


def build_weights(
    sd: dict[str, torch.Tensor], arch: Architecture, n_layers: int, vocab: int | None, device
) -> ModelWeights:
    def get(name: str) -> torch.Tensor:
        return sd[name].to(device=device, dtype=torch.float32).contiguous()

    layers = []
    for i in range(n_layers):
        p = f"{PREFIX}h.{i}."
        layers.append(
            LayerWeights(
                ln1_g=get(p + "ln_1.weight"),
                ln1_b=get(p + "ln_1.bias"),
                w_qkv=get(p + "attn.c_attn.weight"),
                b_qkv=get(p + "attn.c_attn.bias"),
                w_o=get(p + "attn.c_proj.weight"),
                b_o=get(p + "attn.c_proj.bias"),
                ln2_g=get(p + "ln_2.weight"),
                ln2_b=get(p + "ln_2.bias"),
                w_in=get(p + "mlp.c_fc.weight"),
                b_in=get(p + "mlp.c_fc.bias"),
                w_out=get(p + "mlp.c_proj.weight"),
                b_out=get(p + "mlp.c_proj.bias"),
                n_heads=arch.n_heads,
            )
        )
    w_e = get(PREFIX + "wte.weight")
    if vocab is not None and vocab < w_e.shape[0]:
        w_e = w_e[:vocab].contiguous()
    return ModelWeights(
        W_E=w_e,
        W_P=get(PREFIX + "wpe.weight"),
        layers=layers,
        lnf_g=get(PREFIX + "ln_f.weight"),
        lnf_b=get(PREFIX + "ln_f.bias"),
        ln_eps=arch.eps,
        arch=arch,
    )


class GPT2Weights(ModelWeights):
    """Kept for callers that build GPT-2 weights from a ``GPT2LMHeadModel`` state dict."""

    @classmethod
    def from_state_dict(
        cls, sd: dict[str, torch.Tensor], n_layers: int, n_heads: int, ln_eps: float, device
    ) -> ModelWeights:
        d = sd[PREFIX + "wte.weight"].shape[1]
        config = {"n_embd": d, "n_head": n_heads, "layer_norm_epsilon": ln_eps}
        return build_weights(sd, architecture(config), n_layers, None, device)

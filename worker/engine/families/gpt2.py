"""GPT-2: its weights in the engine's canonical layout (engine.md §1.2) and its forward pass
written out (engine.md §1.3), every hook point a real tensor.

Written from the weights rather than by calling Hugging Face modules, so that scaled Q/K, the
masked [q, k, head] attention logits and the layer-norm scales exist as tensors that can be
observed, replaced and differentiated. The forward pass uses the fused HF matrices (one matmul for
Q, K and V); derived scalars and tracing use per-head views of the same storage, so nothing is
copied twice. Parameters never require grad: only activations get gradients, which is all a
derived scalar needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hooks import Hooks
from .layers import attention_mask, gelu_new, layer_norm


@dataclass
class LayerWeights:
    ln1_g: torch.Tensor  # [d]
    ln1_b: torch.Tensor  # [d]
    w_qkv: torch.Tensor  # [d, 3d]  HF c_attn.weight
    b_qkv: torch.Tensor  # [3d]
    w_o: torch.Tensor  # [d, d]  HF attn.c_proj.weight, rows indexed by h*e + c
    b_o: torch.Tensor  # [d]
    ln2_g: torch.Tensor
    ln2_b: torch.Tensor
    w_in: torch.Tensor  # [d, F]
    b_in: torch.Tensor  # [F]
    w_out: torch.Tensor  # [F, d]
    b_out: torch.Tensor  # [d]
    n_heads: int

    @property
    def d_model(self) -> int:
        return self.w_qkv.shape[0]

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def _head_split(self, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        d, h, e = self.d_model, self.n_heads, self.d_head
        w = self.w_qkv[:, chunk * d : (chunk + 1) * d].reshape(d, h, e).permute(1, 0, 2)
        b = self.b_qkv[chunk * d : (chunk + 1) * d].reshape(h, e)
        return w, b

    @property
    def W_Q(self) -> tuple[torch.Tensor, torch.Tensor]:  # [H, d, e], [H, e]
        return self._head_split(0)

    @property
    def W_K(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._head_split(1)

    @property
    def W_V(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._head_split(2)

    @property
    def W_O(self) -> torch.Tensor:  # [H, e, d]
        return self.w_o.reshape(self.n_heads, self.d_head, self.d_model)


@dataclass
class GPT2Weights:
    W_E: torch.Tensor  # [V, d]
    W_P: torch.Tensor  # [ctx, d]
    layers: list[LayerWeights]
    lnf_g: torch.Tensor
    lnf_b: torch.Tensor
    ln_eps: float
    w_out_row_norms: list[torch.Tensor]  # per layer [F]: ‖W_out[i, :]‖

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return self.layers[0].n_heads

    @property
    def d_model(self) -> int:
        return self.W_E.shape[1]

    @property
    def W_U(self) -> torch.Tensor:  # [d, V], tied
        return self.W_E.T

    @classmethod
    def from_state_dict(
        cls, sd: dict[str, torch.Tensor], n_layers: int, n_heads: int, ln_eps: float, device
    ) -> GPT2Weights:
        def get(name: str) -> torch.Tensor:
            return sd[name].to(device=device, dtype=torch.float32).contiguous()

        layers = []
        for i in range(n_layers):
            p = f"transformer.h.{i}."
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
                    n_heads=n_heads,
                )
            )
        return cls(
            W_E=get("transformer.wte.weight"),
            W_P=get("transformer.wpe.weight"),
            layers=layers,
            lnf_g=get("transformer.ln_f.weight"),
            lnf_b=get("transformer.ln_f.bias"),
            ln_eps=ln_eps,
            w_out_row_norms=[lw.w_out.norm(dim=1) for lw in layers],
        )


def embed(weights: GPT2Weights, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    positions = ((~pad).cumsum(dim=1) - 1).clamp(min=0)
    return weights.W_E[tokens] + weights.W_P[positions]


def attention_block(
    lw: LayerWeights,
    layer: int,
    a: torch.Tensor,
    mask: torch.Tensor,
    hooks: Hooks,
) -> torch.Tensor:
    """Attention of one layer on its normalised input `a` [B, T, d]; returns ΔA (with b_O)."""
    b, t, d = a.shape
    h, e = lw.n_heads, lw.d_head
    scale = e**-0.25
    q, k, v = (a @ lw.w_qkv + lw.b_qkv).split(d, dim=-1)
    q = hooks.point("attn.q", layer, q.view(b, t, h, e) * scale)
    k = hooks.point("attn.k", layer, k.view(b, t, h, e) * scale)
    v = hooks.point("attn.v", layer, v.view(b, t, h, e))
    logits = torch.einsum("bqhe,bkhe->bqkh", q, k)
    logits = logits.masked_fill(~mask[..., None], float("-inf"))
    logits = hooks.point("attn.qk_logits", layer, logits)
    probs = hooks.point("attn.qk_probs", layer, torch.softmax(logits, dim=2))
    z = hooks.point("attn.v_out", layer, torch.einsum("bqkh,bkhe->bqhe", probs, v))
    return z.reshape(b, t, d) @ lw.w_o + lw.b_o


def forward(
    weights: GPT2Weights,
    tokens: torch.Tensor,
    pad: torch.Tensor,
    hooks: Hooks,
    needs_grad: bool,
) -> torch.Tensor:
    """Run the model on right-padded `tokens` [B, T]; returns logits [B, T, V]."""
    eps = weights.ln_eps
    mask = attention_mask(pad)
    x = embed(weights, tokens, pad)
    if needs_grad:
        x.requires_grad_(True)
    resid = hooks.point("resid.post_emb", None, x)
    for layer, lw in enumerate(weights.layers):
        a = layer_norm(resid, lw.ln1_g, lw.ln1_b, eps, hooks, ("attn_ln.scale", layer))
        delta_attn = hooks.point(
            "resid.delta_attn", layer, attention_block(lw, layer, a, mask, hooks)
        )
        resid = hooks.point("resid.post_attn", layer, resid + delta_attn)
        m = layer_norm(resid, lw.ln2_g, lw.ln2_b, eps, hooks, ("mlp_ln.scale", layer))
        pre = hooks.point("mlp.pre_act", layer, m @ lw.w_in + lw.b_in)
        post = hooks.point("mlp.post_act", layer, gelu_new(pre))
        delta_mlp = hooks.point("resid.delta_mlp", layer, post @ lw.w_out + lw.b_out)
        resid = hooks.point("resid.post_mlp", layer, resid + delta_mlp)
    final = layer_norm(resid, weights.lnf_g, weights.lnf_b, eps, hooks, ("resid.ln_f.scale", None))
    return hooks.point("logits", None, final @ weights.W_U)

"""The engine's family-agnostic model: weights in one canonical layout, and the architecture
facts (norm, activation, gating, rotary, residual kind, windows) that tell the shared forward pass
and the derived scalars what the family is (families.md §1-§2).

Each family adapter (gpt2, gpt_neox, llama) turns a checkpoint into a `ModelWeights`; everything
downstream (hook points, derived scalars, tracing, token scoring) reads sizes, norms and
directions from here and never asks which family it is serving.

Q, K and V are kept fused as one [d, (H + 2 H_kv) e] matrix laid out [Q | K | V] (GPT-2's
`c_attn` layout) so the forward pass makes one matmul; per-head views, with K/V heads repeated
per query head (transformers' `repeat_kv` order), are what derived scalars and tracing use.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from .layers import ACTIVATIONS, NORMS, rotary_tables, rotate


@dataclass(frozen=True)
class Architecture:
    family: str  # gpt2 | gpt_neox | llama | mistral | qwen2
    n_heads: int
    n_kv_heads: int
    d_head: int
    norm: str  # layer_norm | rms_norm
    eps: float
    activation: str
    gated: bool = False
    parallel: bool = False
    rotary_inv_freq: torch.Tensor | None = None  # [R/2] float32, None: no rotary
    windows: tuple[int | None, ...] = ()  # per layer: sliding window W or None
    absent_points: frozenset[str] = frozenset()

    @property
    def rep(self) -> int:
        return self.n_heads // self.n_kv_heads


@dataclass
class LayerWeights:
    ln1_g: torch.Tensor  # [d]
    ln1_b: torch.Tensor | None  # [d]; None for RMSNorm
    w_qkv: torch.Tensor  # [d, (H + 2 H_kv) e], columns [Q | K | V], head-major within each
    b_qkv: torch.Tensor  # [(H + 2 H_kv) e] (zeros where the family has no bias)
    w_o: torch.Tensor  # [H e, d], rows indexed by h*e + c
    b_o: torch.Tensor  # [d]
    ln2_g: torch.Tensor
    ln2_b: torch.Tensor | None
    w_in: torch.Tensor  # [d, F] (the gate projection when gated)
    b_in: torch.Tensor  # [F]
    w_out: torch.Tensor  # [F, d]
    b_out: torch.Tensor  # [d]
    n_heads: int
    n_kv_heads: int = 0  # 0: = n_heads
    d_head_: int = 0  # 0: d / n_heads
    w_up: torch.Tensor | None = None  # [d, F], gated MLPs only
    b_up: torch.Tensor | None = None

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        self.d_head_ = self.d_head_ or self.w_qkv.shape[0] // self.n_heads

    @property
    def d_model(self) -> int:
        return self.w_qkv.shape[0]

    @property
    def d_head(self) -> int:
        return self.d_head_

    @property
    def split_sizes(self) -> tuple[int, int, int]:
        e = self.d_head
        return (self.n_heads * e, self.n_kv_heads * e, self.n_kv_heads * e)

    def _head_split(self, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[H, d, e] and [H, e] of Q (chunk 0), K (1) or V (2), K/V repeated per query head."""
        d, e = self.d_model, self.d_head
        sizes = self.split_sizes
        start = sum(sizes[:chunk])
        heads = sizes[chunk] // e
        w = self.w_qkv[:, start : start + sizes[chunk]].reshape(d, heads, e).permute(1, 0, 2)
        b = self.b_qkv[start : start + sizes[chunk]].reshape(heads, e)
        if heads != self.n_heads:
            rep = self.n_heads // heads
            w, b = w.repeat_interleave(rep, dim=0), b.repeat_interleave(rep, dim=0)
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
class ModelWeights:
    W_E: torch.Tensor  # [V, d]
    W_P: torch.Tensor | None  # [ctx, d]; None without learned positions
    layers: list[LayerWeights]
    lnf_g: torch.Tensor
    lnf_b: torch.Tensor | None
    ln_eps: float
    arch: Architecture
    W_U_: torch.Tensor | None = None  # [d, V]; None: tied to W_E
    w_out_row_norms: list[torch.Tensor] = field(default_factory=list)  # per layer [F]

    def __post_init__(self):
        if not self.w_out_row_norms:
            self.w_out_row_norms = [lw.w_out.norm(dim=1) for lw in self.layers]

    def cast(self, dtype: torch.dtype) -> ModelWeights:
        """A copy with every weight tensor in `dtype` (ACTQ_DTYPE); the architecture (rotary
        frequencies, float32) is shared."""
        layers = [_cast_fields(lw, dtype) for lw in self.layers]
        out = _cast_fields(self, dtype, layers=layers)
        out.w_out_row_norms = [n.to(dtype) for n in self.w_out_row_norms]
        return out

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.W_E.dtype

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
    def W_U(self) -> torch.Tensor:  # [d, V]
        return self.W_E.T if self.W_U_ is None else self.W_U_

    @property
    def parallel(self) -> bool:
        return self.arch.parallel

    # -- norms ---------------------------------------------------------------------------------
    def norm(self, x, gain, bias, hooks=None, point=None, detach_scale=False) -> torch.Tensor:
        fn = NORMS[self.arch.norm]
        return fn(x, gain, bias, self.ln_eps, hooks, point, detach_scale)

    def norm_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's scale s of x ([..., 1]), as its hook point holds it."""
        if self.arch.norm == "layer_norm":
            x = x - x.mean(dim=-1, keepdim=True)
        return torch.sqrt((x * x).mean(dim=-1, keepdim=True) + self.ln_eps)

    def attention_input(self, layer: int, resid: torch.Tensor, detach_scale=False):
        lw = self.layers[layer]
        return self.norm(resid, lw.ln1_g, lw.ln1_b, detach_scale=detach_scale)

    def mlp_input(self, layer: int, resid: torch.Tensor, detach_scale=False):
        lw = self.layers[layer]
        return self.norm(resid, lw.ln2_g, lw.ln2_b, detach_scale=detach_scale)

    def final_input(self, xf: torch.Tensor, detach_scale=False):
        return self.norm(xf, self.lnf_g, self.lnf_b, detach_scale=detach_scale)

    # -- residual stream locations -----------------------------------------------------------
    def mlp_residual_key(self, layer: int) -> tuple[str, int | None]:
        """The hook point holding the residual the layer's MLP reads (rM, or rA when parallel)."""
        if self.parallel:
            return self.layer_input_key(layer)
        return ("resid.post_attn", layer)

    @staticmethod
    def layer_input_key(layer: int) -> tuple[str, int | None]:
        return ("resid.post_emb", None) if layer == 0 else ("resid.post_mlp", layer - 1)

    # -- attention pieces --------------------------------------------------------------------
    def rotary_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, T, 1, R] at `positions` [B, T], broadcasting over a [B, T, H, e] head
        axis, in the weights' dtype (computed in float32)."""
        cos, sin = rotary_tables(self.arch.rotary_inv_freq, positions)
        dtype = self.compute_dtype
        return cos.unsqueeze(-2).to(dtype), sin.unsqueeze(-2).to(dtype)

    def rotary(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary at `positions` (broadcasting against x's leading axes), or x unchanged."""
        if self.arch.rotary_inv_freq is None:
            return x
        cos, sin = rotary_tables(self.arch.rotary_inv_freq, positions)
        while cos.dim() < x.dim() and cos.dim() > 1:
            cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        return rotate(x, cos, sin)

    def head_vectors(self, layer: int, chunk: int, a: torch.Tensor, h: int, positions=None):
        """Query (0), key (1) or value (2) of query head h for normalised rows a [..., d] at
        `positions` (an int or a tensor over a's leading axes): Q and K rotated there and scaled
        by e^-1/4, V as projected."""
        lw = self.layers[layer]
        w, b = lw._head_split(chunk)
        x = a @ w[h] + b[h]
        if chunk == 2:
            return x
        if self.arch.rotary_inv_freq is not None:
            x = self.rotary(x, torch.as_tensor(positions, device=a.device))
        return x * lw.d_head**-0.25

    def window(self, layer: int) -> int | None:
        windows = self.arch.windows
        return windows[layer] if layer < len(windows) else None

    # -- MLP pieces ----------------------------------------------------------------------------
    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.arch.activation](x)

    def mlp_neuron(self, layer: int, m: torch.Tensor, i: int, post: bool) -> torch.Tensor:
        """pre (the gate projection when gated) or post (act(pre), times up when gated) of
        neuron i for normalised MLP input rows m [..., d]."""
        lw = self.layers[layer]
        pre = m @ lw.w_in[:, i] + lw.b_in[i]
        if not post:
            return pre
        out = self.activation(pre)
        if lw.w_up is not None:
            out = out * (m @ lw.w_up[:, i] + lw.b_up[i])
        return out

    def mlp_read_scalar(self, layer: int, m: torch.Tensor, i: int) -> torch.Tensor:
        """ψ (families.md §5.1): the pre-activation when ungated, the activation when gated."""
        return self.mlp_neuron(layer, m, i, post=self.layers[layer].w_up is not None)

    def mlp_read_scalars(self, layer: int, m: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
        """ψ of neuron neurons[j] on row m[j] ([n, d], [n] -> [n]): one product per weight
        matrix for many (token, neuron) pairs, where `mlp_read_scalar` takes one neuron."""
        lw = self.layers[layer]
        pre = (m * lw.w_in[:, neurons].T).sum(dim=-1) + lw.b_in[neurons]
        if lw.w_up is None:
            return pre
        return self.activation(pre) * ((m * lw.w_up[:, neurons].T).sum(dim=-1) + lw.b_up[neurons])


def _cast_fields(obj, dtype: torch.dtype, **overrides):
    """dataclasses.replace with every floating tensor field cast to `dtype`."""
    changes = {
        f.name: getattr(obj, f.name).to(dtype)
        for f in fields(obj)
        if isinstance(getattr(obj, f.name), torch.Tensor)
        and getattr(obj, f.name).is_floating_point()
    }
    return replace(obj, **{**changes, **overrides})

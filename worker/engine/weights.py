"""GPT-2 weights in the engine's canonical layout (engine.md §1.2), built once from an HF state dict.

The forward pass uses the fused HF matrices (one matmul for Q, K and V); derived scalars and
tracing use per-head views of the same storage, so nothing is copied twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

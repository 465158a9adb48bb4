"""Helpers the family adapters share: reading HF tensors in float32 and the Architecture
fields every rotary family fills in the same way."""

from __future__ import annotations

import torch

from models.families import FamilyShape, rotary_dim, sliding_windows

from .base import Architecture
from .rotary import inv_freq


class StateDict:
    """A checkpoint's tensors by HF name, read as float32 on the target device."""

    def __init__(self, sd: dict[str, torch.Tensor], device):
        self.sd, self.device = sd, device

    def has(self, name: str) -> bool:
        return name in self.sd

    def get(self, name: str) -> torch.Tensor:
        return self.sd[name].to(device=self.device, dtype=torch.float32).contiguous()

    def linear(self, name: str) -> torch.Tensor:
        """An nn.Linear weight [out, in] as the engine's [in, out]."""
        return self.get(name + ".weight").T.contiguous()

    def bias(self, name: str, size: int) -> torch.Tensor:
        """An nn.Linear bias, or zeros where the checkpoint has none."""
        key = name + ".bias"
        if key in self.sd:
            return self.get(key)
        return torch.zeros(size, dtype=torch.float32, device=self.device)


def rotary_architecture(
    config: dict, shape: FamilyShape, norm: str, gated: bool, device
) -> Architecture:
    return Architecture(
        family=shape.family,
        n_heads=shape.n_heads,
        n_kv_heads=shape.n_kv_heads,
        d_head=shape.d_head,
        norm=norm,
        eps=shape.eps,
        activation=shape.activation,
        gated=gated,
        parallel=shape.parallel,
        rotary_inv_freq=inv_freq(config, rotary_dim(config, shape.d_head)).to(device),
        windows=sliding_windows(config, shape.n_layers),
        absent_points=frozenset(shape.absent_locations),
    )


def unembedding(sd: StateDict, names: tuple[str, ...], w_e: torch.Tensor, tied: bool, vocab: int):
    """W_U [d, V]: the first V rows of the first present output matrix, transposed; None if tied
    (W_Eᵀ) or if the checkpoint stores none."""
    if tied:
        return None
    for name in names:
        if sd.has(name):
            return sd.get(name)[:vocab].T.contiguous()
    return None

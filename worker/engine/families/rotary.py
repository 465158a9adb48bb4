"""Rotary frequencies from a config, in float32, as transformers' ROPE_INIT_FUNCTIONS compute
`inv_freq` for the supported rope types (families.md §1.1): default, linear, llama3."""

from __future__ import annotations

import math

import torch

from models.families import rope_settings


def inv_freq(config: dict, rotary_dim: int) -> torch.Tensor:
    theta, rope_type, params = rope_settings(config)
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    freq = 1.0 / (theta**exponent)
    if rope_type == "linear":
        return freq / float(params["factor"])
    if rope_type == "llama3":
        return _llama3(freq, params)
    return freq


def _llama3(freq: torch.Tensor, params: dict) -> torch.Tensor:
    factor = float(params["factor"])
    low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    old_context = float(params["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / freq
    scaled = torch.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)

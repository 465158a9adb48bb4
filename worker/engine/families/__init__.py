"""One adapter per architecture family: its weights in the engine's canonical layout
(`base.ModelWeights`) and its architecture facts; the block's forward through the named hook
points is `decoder.forward`, shared. GPT-2 is the reference (engine.md); the others follow
spec/families.md. The adapter is chosen by config.json's model_type."""

from __future__ import annotations

import torch

from models.families import family_shape

from . import gpt2, gpt_neox, llama
from .base import ModelWeights

# model_type -> adapter module (build_weights(raw state dict, config, shape, V, device))
ADAPTERS = {
    "gpt_neox": gpt_neox,
    "llama": llama,
    "mistral": llama,
    "qwen2": llama,
}


def build_model_weights(
    raw: dict[str, torch.Tensor],
    config: dict,
    vocab: int,
    device,
    source: str = "model",
    dtype: torch.dtype = torch.float32,
) -> ModelWeights:
    """The engine's weights for a checkpoint's raw tensors (names as saved) and its config.

    Adapters build float32 weights whatever the checkpoint stores (families.md: bf16/fp16 are
    upcast); a reduced compute `dtype` (ACTQ_DTYPE) is one cast of the finished weights, so every
    adapter gets it for free and the rotary frequencies stay float32."""
    shape = family_shape(config, source)
    if shape.family == "gpt2":
        from ..loading import normalise_state_dict

        sd = normalise_state_dict(raw)
        weights = gpt2.build_weights(sd, gpt2.architecture(config), shape.n_layers, None, device)
    else:
        weights = ADAPTERS[shape.family].build_weights(raw, config, shape, vocab, device)
    return weights if dtype == torch.float32 else weights.cast(dtype)

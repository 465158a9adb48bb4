"""Named hook points and the hooks attached to them for one pass.

Every interesting tensor of the forward pass goes through `Hooks.point(name, layer, x)`. The names
are TDB's ActivationLocationType values, so this module is the one translation table between the
wire and the engine: `HOOK_POINTS` lists every point with its per-sequence shape, and a name not
in it is an error, never a guess.

Stages at a point, in order (engine.md §1.7):
  1. forward hooks (ablations), each may replace the tensor;
  2. the forward value is saved (so saved values are post-ablation);
  3. gradient hooks are registered on the tensor: saving first, then backward ablations, so a
     saved gradient is the pre-ablation one (TDB quirk, engine.md §5.3) while everything upstream
     sees the ablated gradient;
  4. the attached tensor is kept for tracing (the residual a traced node is recomputed from);
  5. a substitution may replace the tensor for everything downstream (an autoencoder's
     encode/decode, engine.md §9.4), so the point's own saved value is the one before it.
A Hooks object lives for one pass; nothing is registered on the model itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from models.errors import RequestValidationError

from .stopping import backward_check, check_stop, stopping_enabled

# name -> (per-sequence shape, layered).  Shapes name the axes; B (batch) is always first.
HOOK_POINTS: dict[str, tuple[str, bool]] = {
    "resid.post_emb": ("[pos, d_model]", False),
    "attn_ln.scale": ("[pos, 1]", True),
    "attn.q": ("[pos, head, d_head] (scaled by d_head^-1/4)", True),
    "attn.k": ("[pos_k, head, d_head] (scaled by d_head^-1/4)", True),
    "attn.v": ("[pos_k, head, d_head]", True),
    "attn.qk_logits": ("[pos_q, pos_k, head] (-inf above the diagonal)", True),
    "attn.qk_probs": ("[pos_q, pos_k, head]", True),
    "attn.v_out": ("[pos, head, d_head]", True),
    "resid.delta_attn": ("[pos, d_model]", True),
    "resid.post_attn": ("[pos, d_model]", True),
    "mlp_ln.scale": ("[pos, 1]", True),
    "mlp.pre_act": ("[pos, d_mlp]", True),
    "mlp.post_act": ("[pos, d_mlp]", True),
    "resid.delta_mlp": ("[pos, d_model]", True),
    "resid.post_mlp": ("[pos, d_model]", True),
    "resid.ln_f.scale": ("[pos, 1]", False),
    "logits": ("[pos, vocab]", False),
    # autoencoder points, present at the layers an AE covers (engine.md §9.4)
    "online_mlp_autoencoder_latent": ("[pos, latent]", True),
    "online_attention_autoencoder_latent": ("[pos, latent]", True),
    "online_mlp_autoencoder_error": ("[pos, d_mlp]", True),
    "online_residual_mlp_autoencoder_error": ("[pos, d_model]", True),
    "online_residual_attention_autoencoder_error": ("[pos, d_model]", True),
}

# Axes of each point that run over sequence positions (after the batch axis), for truncation.
SEQUENCE_AXES: dict[str, tuple[int, ...]] = {
    name: (0, 1) if name in ("attn.qk_logits", "attn.qk_probs") else (0,) for name in HOOK_POINTS
}

Key = tuple[str, int | None]
ForwardHook = Callable[[torch.Tensor], torch.Tensor]
GradHook = Callable[[torch.Tensor], torch.Tensor]


def check_point(name: str, layer: int | None, n_layers: int, path: str | None = None) -> Key:
    """Validate a (location, layer) pair against the table; return it as a key."""
    if name not in HOOK_POINTS:
        raise RequestValidationError(f"activation location {name!r} cannot be hooked", path)
    layered = HOOK_POINTS[name][1]
    if layered and (layer is None or not 0 <= layer < n_layers):
        raise RequestValidationError(f"layer {layer} is not a layer of this model", path)
    if not layered and layer is not None:
        raise RequestValidationError(f"{name} has no layers; layerIndex must be null", path)
    return (name, layer)


@dataclass
class Hooks:
    forward: dict[Key, list[ForwardHook]] = field(default_factory=dict)
    backward: dict[Key, list[GradHook]] = field(default_factory=dict)
    save_forward: set[Key] = field(default_factory=set)
    save_grad: set[Key] = field(default_factory=set)
    keep_attached: set[Key] = field(default_factory=set)
    saved: dict[Key, torch.Tensor] = field(default_factory=dict)
    grads: dict[Key, torch.Tensor] = field(default_factory=dict)
    attached: dict[Key, torch.Tensor] = field(default_factory=dict)
    substitute: dict[Key, Callable[[torch.Tensor, Hooks], torch.Tensor]] = field(
        default_factory=dict
    )

    def add_forward(self, key: Key, fn: ForwardHook) -> None:
        self.forward.setdefault(key, []).append(fn)

    def add_backward(self, key: Key, fn: GradHook) -> None:
        self.backward.setdefault(key, []).append(fn)

    def point(self, name: str, layer: int | None, x: torch.Tensor) -> torch.Tensor:
        check_stop()  # a canceled job stops here, between layers (worker.engine.stopping)
        key = (name, layer)
        for fn in self.forward.get(key, ()):
            x = fn(x)
        if key in self.save_forward:
            self.saved[key] = x.detach()
        if x.requires_grad:
            if stopping_enabled():
                x.register_hook(backward_check)
            if key in self.save_grad:
                x.register_hook(self._grad_saver(key))
            for fn in self.backward.get(key, ()):
                x.register_hook(fn)
        if key in self.keep_attached:
            self.attached[key] = x
        substitution = self.substitute.get(key)
        return x if substitution is None else substitution(x, self)

    def _grad_saver(self, key: Key) -> GradHook:
        def save(grad: torch.Tensor) -> None:
            self.grads[key] = grad.detach()

        return save


def overwrite(x: torch.Tensor, index: tuple, value: float) -> torch.Tensor:
    """A copy of `x` with `x[index] = value` (the ablation primitive, forward and backward)."""
    x = x.clone()
    x[index] = value
    return x

"""One batch row's view of a pass: its saved values and gradients cut to its own length, the
shared intermediate quantities the derived scalars reuse (VO, head writes), and the gradient
direction g the write-to-grad scalars project on (engine.md §3.1, §3.6)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.errors import RequestValidationError

from .families.base import ModelWeights
from .hooks import SEQUENCE_AXES
from .tracing import RESID_POST_MLP, TracedNode, residual_gradient


class ElementView:
    """Read access to one batch row's saved values, cut to its own length, plus cached helpers."""

    def __init__(
        self,
        weights: ModelWeights,
        hooks,
        row: int,
        length: int,
        trace: TracedNode | None,
        fake_grad_index=None,
        path: str = "inferenceRequestSpec",
        autoencoders=None,
        width: int | None = None,
    ):
        self.path = path  # of the sub-request's inference spec, for error messages
        self.weights = weights
        self.hooks = hooks
        self.row = row
        self.T = length
        self.trace = trace
        self.fake_grad_index = fake_grad_index
        self._cache: dict = {}
        self.autoencoders = autoencoders  # LoadedAutoencoders, or None
        self.width = width  # the row's padded width (TDB's quirks); None: the pass's width

    def _cut(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = x[self.row]
        for axis in SEQUENCE_AXES[name]:
            x = x.narrow(axis, 0, min(self.T, x.shape[axis]))
        return x

    def fwd(self, name: str, layer: int | None) -> torch.Tensor:
        return self._cut(name, self.hooks.saved[(name, layer)])

    def grad(self, name: str, layer: int | None) -> torch.Tensor:
        """The gradient at a point; zeros where the backward pass never reached it (§3.1)."""
        g = self.hooks.grads.get((name, layer))
        if g is None:
            return torch.zeros_like(self.fwd(name, layer))
        return self._cut(name, g)

    def cached(self, key, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    # -- shared intermediate quantities -------------------------------------------------------
    def vo(self, layer: int) -> torch.Tensor:
        """VO[k, h, :] = V[k, h, :] W_O[h]  ([T, H, d], no bias)."""
        return self.cached(
            ("vo", layer),
            lambda: torch.einsum(
                "khe,hed->khd", self.fwd("attn.v", layer), self.weights.layers[layer].W_O
            ),
        )

    def vo_norm(self, layer: int) -> torch.Tensor:
        return self.cached(("vo_norm", layer), lambda: self.vo(layer).norm(dim=-1))

    def head_write(self, layer: int) -> torch.Tensor:
        """Σ_c Z[q, h, c] W_O[h, c, :]  ([T, H, d])."""
        return self.cached(
            ("zo", layer),
            lambda: torch.einsum(
                "qhe,hed->qhd", self.fwd("attn.v_out", layer), self.weights.layers[layer].W_O
            ),
        )

    def direction(self) -> tuple[torch.Tensor, int, int]:
        """(g, L_g, loc_g): the residual gradient the write-to-grad DSTs project on (§3.1)."""
        if self.trace is None:
            n = self.weights.n_layers
            return self.grad("resid.post_mlp", n - 1), n - 1, RESID_POST_MLP
        name, layer = self.trace.residual_key
        return (self.grad(name, layer),) + self.trace.direction_location

    def activation_direction(self) -> tuple[torch.Tensor, int, int]:
        """(g̃, L_g, loc_g): the same direction recomputed from forward values alone (§3.6)."""
        if self.trace is None or self.trace.trace_type == "V":
            raise RequestValidationError(
                "final-activation-residual-gradient scalars need a trace config that is not a V trace",
                f"{self.path}.traceConfig",
            )
        if None in self.trace.indices:
            raise RequestValidationError(
                "final-activation-residual-gradient scalars need one traced scalar: give every "
                "tensor index of activationIndexForWithinLayerGrad as an integer",
                f"{self.path}.activationIndexForWithinLayerGrad",
            )

        def compute():
            name, layer = self.trace.residual_key
            resid = self.hooks.saved[(name, layer)][self.row, : self.width]
            return residual_gradient(self.weights, self.trace, resid)[: self.T]

        return (self.cached("g_tilde", compute),) + self.trace.direction_location

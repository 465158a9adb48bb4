"""The one autoencoder type the engine computes with, whatever file it came from (engine.md §9.1).

An ``Autoencoder`` is a named set of per-layer ``AutoencoderLayer``s that all read the same input
location (``mlp_post_act``, ``resid_delta_mlp`` or ``resid_delta_attn``). Layers a folder lacks are
simply absent: the AE covers the others (engine.md §9.8, partial-layer AEs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# input DST -> (hook point the AE reads, kind, error hook point)
INPUTS = {
    "mlp_post_act": ("mlp.post_act", "mlp", "online_mlp_autoencoder_error"),
    "resid_delta_mlp": ("resid.delta_mlp", "mlp", "online_residual_mlp_autoencoder_error"),
    "resid_delta_attn": (
        "resid.delta_attn",
        "attention",
        "online_residual_attention_autoencoder_error",
    ),
}
LATENT_POINTS = {
    "mlp": "online_mlp_autoencoder_latent",
    "attention": "online_attention_autoencoder_latent",
}
NODE_TYPES = {"mlp": "mlp_autoencoder_latent", "attention": "attention_autoencoder_latent"}
ACTIVATIONS = ("relu", "identity", "topk", "jumprelu")


@dataclass
class AutoencoderLayer:
    """One layer's frozen parameters: encode(x) = φ((x − b_pre) W_encᵀ + b_lat), decode(z) = z W_decᵀ + b_pre."""

    pre_bias: torch.Tensor  # [n]
    w_enc: torch.Tensor  # [m, n]
    latent_bias: torch.Tensor  # [m]
    w_dec: torch.Tensor  # [n, m]
    activation: str = "relu"  # one of ACTIVATIONS
    k: int | None = None  # topk
    threshold: torch.Tensor | None = None  # jumprelu, [m]
    subtract_pre_bias: bool = True  # SAELens apply_b_dec_to_input

    def __post_init__(self):
        # W_dec [n, m] is kept as the transpose of a contiguous [m, n]: each latent's decoder
        # row is contiguous, so decoding and differentiating only the active latents reads just
        # their rows (autoencoders.sparse). A TDB file's [n, m] is re-laid out once, at load.
        if not self.w_dec.T.is_contiguous():
            self.w_dec = self.w_dec.T.contiguous().T

    @property
    def decoder_rows(self) -> torch.Tensor:
        """W_decᵀ [m, n], contiguous: row j is latent j's write in the AE-input space."""
        return self.w_dec.T

    @property
    def n_inputs(self) -> int:
        return self.w_enc.shape[1]

    @property
    def n_latents(self) -> int:
        return self.w_enc.shape[0]

    def encode_pre_act(self, x: torch.Tensor) -> torch.Tensor:
        if self.subtract_pre_bias:
            x = x - self.pre_bias
        return x @ self.w_enc.T + self.latent_bias

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.activation == "identity":
            return pre
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        if self.activation == "topk":
            values, indices = torch.topk(pre, self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return self.activate(self.encode_pre_act(x))
        # nothing to differentiate: bias and ReLU in place on the product, no [T, m] copies
        if self.subtract_pre_bias:
            x = x - self.pre_bias
        pre = (x @ self.w_enc.T).add_(self.latent_bias)
        if self.activation == "relu":
            return pre.relu_()
        if self.activation == "jumprelu":
            above = pre > self.threshold
            return pre.relu_().mul_(above)
        return self.activate(pre)

    def encode_one(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """encode(x)[..., j], reading only encoder row j unless the activation (TopK) couples
        the latents."""
        if self.activation == "topk":
            return self.encode(x)[..., j]
        if self.subtract_pre_bias:
            x = x - self.pre_bias
        pre = x @ self.w_enc[j] + self.latent_bias[j]
        if self.activation == "identity":
            return pre
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold[j])
        return torch.relu(pre)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w_dec.T + self.pre_bias

    def to(self, device) -> AutoencoderLayer:
        def move(t):
            return None if t is None else t.to(device=device, dtype=torch.float32).contiguous()

        return AutoencoderLayer(
            move(self.pre_bias),
            move(self.w_enc),
            move(self.latent_bias),
            move(self.decoder_rows).T,
            self.activation,
            self.k,
            move(self.threshold),
            self.subtract_pre_bias,
        )


@dataclass
class Autoencoder:
    """An AE over some layers of one input location, with the name model_info reports."""

    name: str
    input_dst: str  # key of INPUTS
    layers: dict[int, AutoencoderLayer]
    file_format: str  # "tdb" | "saelens"
    content_hash: str
    omitted_latents: int = 0  # TDB dead-latent omission (engine.md §9.3)
    _write_cache: dict = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        """ "mlp" or "attention": which of the server's two AE slots it fills."""
        return INPUTS[self.input_dst][1]

    @property
    def input_point(self) -> str:
        return INPUTS[self.input_dst][0]

    @property
    def error_point(self) -> str:
        return INPUTS[self.input_dst][2]

    @property
    def latent_point(self) -> str:
        return LATENT_POINTS[self.kind]

    @property
    def node_type(self) -> str:
        return NODE_TYPES[self.kind]

    @property
    def n_latents(self) -> int:
        return next(iter(self.layers.values())).n_latents

    def write_vectors(self, layer: int, w_out: torch.Tensor | None) -> torch.Tensor:
        """W_write [m, d]: each latent's residual write (through W_out for mlp_post_act AEs)."""
        if layer not in self._write_cache:
            rows = self.layers[layer].decoder_rows
            if self.input_dst == "mlp_post_act":
                rows = rows @ w_out
            self._write_cache[layer] = rows.contiguous()
        return self._write_cache[layer]

    def write_vector(self, layer: int, j: int, w_out: torch.Tensor | None) -> torch.Tensor:
        """W_write[j] alone ([d]), without building the whole [m, d] matrix."""
        row = self.layers[layer].decoder_rows[j]
        return row @ w_out if self.input_dst == "mlp_post_act" else row

    def _writes_of(self, layer: int, latents: torch.Tensor, w_out: torch.Tensor | None):
        """W_write of some latents ([k, d]), in blocks (only those decoder rows are read)."""
        rows = self.layers[layer].decoder_rows
        for start in range(0, latents.numel(), NORM_BLOCK):
            block = latents[start : start + NORM_BLOCK]
            k = block.numel()
            # always a full block (padded with its first latent): each latent's write comes
            # out of the same shape of product whichever latents share it, so a cached norm
            # never depends on the requests that came before
            padded = torch.cat([block, block[:1].expand(NORM_BLOCK - k)])
            part = rows.index_select(0, padded)
            yield (part @ w_out if self.input_dst == "mlp_post_act" else part)[:k]

    def write_norms(self, layer: int, w_out: torch.Tensor | None, latents=None) -> torch.Tensor:
        """‖W_write[j]‖ ([m]) for the given latents (all when None), each computed once and
        cached; the others are 0 until asked for. Only norms are kept: the [m, d] write matrix
        of a 32k-latent MLP AE is 100 MB a layer."""
        key = ("norm", layer)
        if key not in self._write_cache:
            m, device = self.layers[layer].n_latents, self.layers[layer].w_enc.device
            self._write_cache[key] = (
                torch.zeros(m, device=device),
                torch.zeros(m, dtype=torch.bool, device=device),
            )
        norms, known = self._write_cache[key]
        wanted = torch.arange(norms.numel(), device=norms.device) if latents is None else latents
        missing = wanted[~known[wanted]]
        if missing.numel():
            norms[missing] = torch.cat(
                [w.norm(dim=-1) for w in self._writes_of(layer, missing, w_out)]
            )
            known[missing] = True
        return norms

    def times_write_norms(self, layer: int, z: torch.Tensor, w_out: torch.Tensor | None):
        """z[t, j] · ‖W_write[j]‖ ([T, m]); only the norms of latents active somewhere in z are
        needed (0 · ‖W_write[j]‖ is 0)."""
        return z * self.write_norms(layer, w_out, active_latents(z))

    def project_on_active_writes(self, layer: int, g: torch.Tensor, z: torch.Tensor, w_out):
        """z ⊙ (g W_writeᵀ) for g, z [R, d], [R, m]: each row's active latents only, as
        (g W_outᵀ) against their decoder rows ([R, m], 0 where z is 0)."""
        if self.input_dst == "mlp_post_act":
            g = g @ w_out.T
        rows = self.layers[layer].decoder_rows
        out = torch.zeros_like(z)
        active = active_latents(z)
        for start in range(0, active.numel(), CHUNK):
            cols = active[start : start + CHUNK]
            out[:, cols] = z[:, cols] * (g @ rows.index_select(0, cols).T)
        return out


def active_latents(z: torch.Tensor) -> torch.Tensor:
    """The latents nonzero at some token of z [..., m], ascending (``|z|``'s column maximum:
    a float reduction, several times faster on CPU than ``(z != 0).any(dim=0)``)."""
    z2 = z.reshape(-1, z.shape[-1])
    if z2.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=z.device)
    return torch.nonzero(z2.abs().amax(dim=0) != 0).flatten()


CHUNK = 4096
NORM_BLOCK = 64  # latents per product when their write norms are computed

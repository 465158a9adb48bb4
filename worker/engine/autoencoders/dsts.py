"""The autoencoder DSTs (engine.md §9.6 and the §3.9 ones TDB's routes serve, §9.8).

Each family exists three times: generic (the single loaded AE), ``mlp_`` and ``attention_``. A
generic DST keeps its own name and node type on the wire but computes with the one loaded AE (the
generic -> specific mapping of §9.6). Layered AE DSTs are computed at the layers the AE covers.
"""

from __future__ import annotations

import torch

from models.errors import RequestValidationError

from ..derived import DstDef, gate
from ..tracing import ATTN, MLP
from ..view import ElementView
from .model import LATENT_POINTS

PREFIX = {None: "", "mlp": "mlp_", "attention": "attention_"}
ALL_LATENT_POINTS = tuple(LATENT_POINTS.values())
INPUT_POINTS = ("mlp.post_act", "resid.delta_mlp", "resid.delta_attn")


def autoencoder(v: ElementView, kind: str | None, path: str | None = None):
    ae = v.autoencoders.get(kind) if v.autoencoders is not None else None
    if ae is None:
        what = "exactly one autoencoder" if kind is None else f"an {kind} autoencoder"
        raise RequestValidationError(f"this DST needs {what} loaded", path)
    return ae


def _covered(kind):
    return lambda v: sorted(autoencoder(v, kind).layers)


def _latents(kind):
    return lambda v, layer: v.fwd(autoencoder(v, kind).latent_point, layer)


def _w_out(v: ElementView, layer: int):
    return v.weights.layers[layer].w_out


def _write_norm(kind):
    def fn(v, layer):
        ae = autoencoder(v, kind)
        return ae.times_write_norms(layer, v.fwd(ae.latent_point, layer), _w_out(v, layer))

    return fn


def _act_times_grad(kind):
    def fn(v, layer):
        point = autoencoder(v, kind).latent_point
        return v.fwd(point, layer) * v.grad(point, layer)

    return fn


def _write_to_grad(kind, activation: bool):
    def fn(v, layer):
        ae = autoencoder(v, kind)
        z = v.fwd(ae.latent_point, layer)
        g, lg, loc_g = v.activation_direction() if activation else v.direction()
        if not gate(layer, MLP if ae.kind == "mlp" else ATTN, lg, loc_g):
            return torch.zeros_like(z)
        rows = torch.nonzero(g.any(dim=-1)).flatten()  # a loss direction is 0 but at one token
        out = torch.zeros_like(z)
        out[rows] = ae.project_on_active_writes(layer, g[rows], z[rows], _w_out(v, layer))
        return out

    return fn


def _write(kind):
    def fn(v, layer):
        ae = autoencoder(v, kind)
        z = v.fwd(ae.latent_point, layer)
        return z[..., None] * ae.write_vectors(layer, _w_out(v, layer))[None]

    return fn


def offline_input(v: ElementView, ae, layer: int) -> torch.Tensor:
    """The saved input DST; for resid_delta_mlp AEs TDB uses the MLP write WITHOUT b_out (§9.6)."""
    if ae.input_dst == "resid_delta_mlp":
        return v.fwd("mlp.post_act", layer) @ _w_out(v, layer)
    return v.fwd(ae.input_point, layer)


def _offline_latents(kind):
    def fn(v, layer):
        ae = autoencoder(v, kind)
        return ae.layers[layer].encode(offline_input(v, ae, layer))

    return fn


def _offline_write_norm(kind):
    def fn(v, layer):
        ae = autoencoder(v, kind)
        return ae.times_write_norms(layer, _offline_latents(kind)(v, layer), _w_out(v, layer))

    return fn


def _family(kind) -> dict[str, DstDef]:
    x = PREFIX[kind]
    covered = _covered(kind)
    online = dict(layered=True, points=ALL_LATENT_POINTS, layers=covered)
    offline = dict(layered=True, points=INPUT_POINTS, layers=covered)
    return {
        f"online_{x}autoencoder_latent": DstDef(forward=_latents(kind), **online),
        f"online_{x}autoencoder_write_norm": DstDef(forward=_write_norm(kind), **online),
        f"online_{x}autoencoder_act_times_grad": DstDef(
            forward=_act_times_grad(kind), grad_points=ALL_LATENT_POINTS, **online
        ),
        f"online_{x}autoencoder_write_to_final_residual_grad": DstDef(
            forward=_write_to_grad(kind, False), direction=True, **online
        ),
        f"online_{x}autoencoder_write_to_final_activation_residual_grad": DstDef(
            forward=_write_to_grad(kind, True), activation_direction=True, **online
        ),
        f"online_{x}autoencoder_write": DstDef(forward=_write(kind), **online),
        f"{x}autoencoder_latent": DstDef(forward=_offline_latents(kind), **offline),
        f"{x}autoencoder_write_norm": DstDef(forward=_offline_write_norm(kind), **offline),
    }


def _error_ae(v: ElementView, point: str):
    for ae in v.autoencoders.all() if v.autoencoders is not None else ():
        if ae.error_point == point:
            return ae
    raise RequestValidationError(f"{point} needs an autoencoder on its input location")


def _error_layers(point: str):
    return lambda v: sorted(_error_ae(v, point).layers)


def _error_write_to_grad(v: ElementView, layer):
    err = v.fwd("online_mlp_autoencoder_error", layer)
    g, lg, loc_g = v.direction()
    if not gate(layer, MLP, lg, loc_g):
        return torch.zeros_like(err)
    return err * (g @ _w_out(v, layer).T)


def _errors() -> dict[str, DstDef]:
    mlp_err = "online_mlp_autoencoder_error"
    common = dict(layered=True, points=(mlp_err,), layers=_error_layers(mlp_err))
    out = {
        point: DstDef(
            layered=True,
            forward=lambda v, layer, point=point: v.fwd(point, layer),
            points=(point,),
            layers=_error_layers(point),
        )
        for point in (
            mlp_err,
            "online_residual_mlp_autoencoder_error",
            "online_residual_attention_autoencoder_error",
        )
    }
    out["online_mlp_autoencoder_error_act_times_grad"] = DstDef(
        forward=lambda v, layer: v.fwd(mlp_err, layer) * v.grad(mlp_err, layer),
        grad_points=(mlp_err,),
        **common,
    )
    out["online_mlp_autoencoder_error_write_norm"] = DstDef(
        forward=lambda v, layer: v.fwd(mlp_err, layer) * v.weights.w_out_row_norms[layer],
        **common,
    )
    out["online_mlp_autoencoder_error_write_to_final_residual_grad"] = DstDef(
        forward=_error_write_to_grad, direction=True, **common
    )
    return out


# -- the §3.9 DSTs TDB's routes serve (engine.md §9.8) ------------------------------------------


def latent_input_gradient(v: ElementView, want_input: str | None = None) -> torch.Tensor:
    """∂ Σ_t φ(encode_pre_act(x))[t, j] / ∂x at the AE input of the within-layer-grad latent
    (token t given or all), [T, n]; zero where the latent is inactive."""
    node = v.trace
    if node is None or node.autoencoder is None:
        raise RequestValidationError(
            "this DST needs activationIndexForWithinLayerGrad at online_autoencoder_latent",
            f"{v.path}.activationIndexForWithinLayerGrad",
        )
    ae = node.autoencoder
    if want_input is not None and (ae.input_dst == "mlp_post_act") != (
        want_input == "mlp_post_act"
    ):
        raise RequestValidationError(
            f"this DST needs an autoencoder reading {want_input}; {ae.name} reads {ae.input_dst}",
            f"{v.path}.activationIndexForWithinLayerGrad",
        )

    def compute():
        part = ae.layers[node.layer]
        t, j = node.indices[0], node.indices[-1]
        with torch.enable_grad():
            x = v.fwd(ae.input_point, node.layer).detach().clone().requires_grad_(True)
            z = part.activate(part.encode_pre_act(x))[:, j]
            scalar = z.sum() if t is None else z[t]
            (grad,) = torch.autograd.grad(scalar, x)
        return grad

    return v.cached(("latent_input_gradient", node.layer), compute)


def _trace_layer(v: ElementView) -> list[int]:
    latent_input_gradient(v)
    return [v.trace.layer]


def _attn_write_to_latent(v: ElementView, layer):
    grad = latent_input_gradient(v)
    probs = v.fwd("attn.qk_probs", layer)
    write = torch.einsum("qkh,khd->qkd", probs, v.vo(layer))
    return torch.einsum("qkd,qd->qk", write, grad)[..., None]


def _section_3_9() -> dict[str, DstDef]:
    return {
        "autoencoder_latent_grad_wrt_residual_input": DstDef(
            layered=True,
            forward=lambda v, layer: latent_input_gradient(v, "residual"),
            points=INPUT_POINTS,
            layers=_trace_layer,
        ),
        "autoencoder_latent_grad_wrt_mlp_post_act_input": DstDef(
            layered=True,
            forward=lambda v, layer: latent_input_gradient(v, "mlp_post_act"),
            points=INPUT_POINTS,
            layers=_trace_layer,
        ),
        "attn_write_to_latent_summed_over_heads": DstDef(
            layered=True,
            forward=_attn_write_to_latent,
            points=INPUT_POINTS + ("attn.qk_probs", "attn.v"),
            layers=_trace_layer,
        ),
    }


AE_DSTS: dict[str, DstDef] = {}
for _kind in PREFIX:
    AE_DSTS.update(_family(_kind))
AE_DSTS.update(_errors())
AE_DSTS.update(_section_3_9())


def vocab_latent_pre_activations(v: ElementView, layer: int, latent: int, normed: torch.Tensor):
    """[V]: the MLP AE's latent pre-activation (no nonlinearity) for each token's normalised
    embedding ``normed`` [V, d] passed through the layer's MLP, as TDB's
    ``vocab_token_write_to_input_direction`` does for latents: the MLP's activations for an
    ``mlp_post_act`` AE, its whole output (with ``b_out``) for a ``resid_delta_mlp`` one.
    In chunks of the vocabulary, so that [V, d_mlp] is never held at once."""
    ae = autoencoder(v, "mlp", f"{v.path}.ablationSpecs")
    if ae.input_dst not in ("mlp_post_act", "resid_delta_mlp") or layer not in ae.layers:
        raise RequestValidationError(
            f"the MLP autoencoder reads {ae.input_dst} and covers layers {sorted(ae.layers)}: no "
            f"input direction for layer {layer}",
            f"{v.path}.ablationSpecs.0.index",
        )
    part, lw = ae.layers[layer], v.weights.layers[layer]
    out = []
    for rows in normed.split(4096):
        post = v.weights.activation(rows @ lw.w_in + lw.b_in)
        if lw.w_up is not None:
            post = post * (rows @ lw.w_up + lw.b_up)
        x = post if ae.input_dst == "mlp_post_act" else post @ lw.w_out + lw.b_out
        if part.subtract_pre_bias:
            x = x - part.pre_bias
        out.append(x @ part.w_enc[latent] + part.latent_bias[latent])
    return torch.cat(out)

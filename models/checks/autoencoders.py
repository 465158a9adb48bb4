"""The checks of ``models.checks`` that concern autoencoders (engine.md §9.3, §9.8): which AE a
node type, location or DST means, whether it is loaded, covers the layer and has the latent.

A request for an AE the server does not serve is 422 ``unsupported``; a layer the AE does not
cover, a latent beyond its count, or one of the requests TDB fails on (§9.8) is 422 naming the
field, before anything is queued.
"""

from __future__ import annotations

from models.autoencoders import NO_AUTOENCODERS, AutoencoderInfo, ServedAutoencoders
from models.errors import RequestValidationError, UnsupportedError
from models.wire.enums import DerivedScalarType

DST = DerivedScalarType

# §3.9 DSTs TDB's routes serve; they read the latent of activationIndexForWithinLayerGrad.
WITHIN_LAYER_LATENT_DSTS = frozenset(
    {
        DST.AUTOENCODER_LATENT_GRAD_WRT_RESIDUAL_INPUT,
        DST.AUTOENCODER_LATENT_GRAD_WRT_MLP_POST_ACT_INPUT,
        DST.ATTN_WRITE_TO_LATENT_SUMMED_OVER_HEADS,
    }
)
OFFLINE_LATENT_DSTS = frozenset(
    {
        DST.AUTOENCODER_LATENT,
        DST.AUTOENCODER_WRITE_NORM,
        DST.MLP_AUTOENCODER_LATENT,
        DST.MLP_AUTOENCODER_WRITE_NORM,
        DST.ATTENTION_AUTOENCODER_LATENT,
        DST.ATTENTION_AUTOENCODER_WRITE_NORM,
    }
)
ONLINE_LATENT_DSTS = frozenset(
    {
        DST.ONLINE_AUTOENCODER_LATENT,
        DST.ONLINE_MLP_AUTOENCODER_LATENT,
        DST.ONLINE_ATTENTION_AUTOENCODER_LATENT,
    }
)
_ERROR_DST_INPUTS = {
    DST.ONLINE_MLP_AUTOENCODER_ERROR: "mlp_post_act",
    DST.ONLINE_MLP_AUTOENCODER_ERROR_ACT_TIMES_GRAD: "mlp_post_act",
    DST.ONLINE_MLP_AUTOENCODER_ERROR_WRITE_NORM: "mlp_post_act",
    DST.ONLINE_MLP_AUTOENCODER_ERROR_WRITE_TO_FINAL_RESIDUAL_GRAD: "mlp_post_act",
    DST.ONLINE_RESIDUAL_MLP_AUTOENCODER_ERROR: "resid_delta_mlp",
    DST.ONLINE_RESIDUAL_ATTENTION_AUTOENCODER_ERROR: "resid_delta_attn",
}
# Generic, MLP and attention families of §9.6 (and the §3.9 DSTs, which use the single AE).
_SERVED_FAMILY = frozenset(
    {
        *OFFLINE_LATENT_DSTS,
        *ONLINE_LATENT_DSTS,
        *(
            DST(f"online_{x}autoencoder_{rest}")
            for x in ("", "mlp_", "attention_")
            for rest in (
                "act_times_grad",
                "write_norm",
                "write_to_final_residual_grad",
                "write_to_final_activation_residual_grad",
                "write",
            )
        ),
    }
)


def served(shape) -> ServedAutoencoders:
    return getattr(shape, "autoencoders", None) or NO_AUTOENCODERS


def _missing(what: str, path: str, loaded: ServedAutoencoders) -> UnsupportedError:
    names = ", ".join(f"{ae.kind}: {ae.name}" for ae in loaded.all()) or "none"
    return UnsupportedError(
        f"{what} needs an autoencoder this server does not have (loaded: {names})", path=path
    )


def node_type_autoencoder(node_type: str, path: str, shape) -> AutoencoderInfo:
    loaded = served(shape)
    ae = loaded.for_node_type(node_type)
    if ae is None:
        what = (
            f"{node_type} nodes"
            if node_type != "autoencoder_latent"
            else ("autoencoder_latent nodes (exactly one autoencoder loaded)")
        )
        raise _missing(what, path, loaded)
    return ae


def check_layer_covered(ae: AutoencoderInfo, layer: int | None, path: str) -> None:
    if layer is not None and layer not in ae.layers:
        raise RequestValidationError(
            f"autoencoder {ae.name} covers layers {list(ae.layers)}, not layer {layer}", path=path
        )


def check_latent(ae: AutoencoderInfo, value, path: str) -> None:
    if value is None or value == "All":
        return
    if not -ae.n_latents <= value < ae.n_latents:
        raise RequestValidationError(
            f"latent {value} is out of range: autoencoder {ae.name} has {ae.n_latents} latents "
            f"(0 to {ae.n_latents - 1})",
            path=path,
        )


def check_latent_node(node, path: str, shape) -> None:
    """An ablated or traced latent node: its AE is loaded, covers the layer, has the latent."""
    ae = node_type_autoencoder(node.node_type.value, f"{path}.nodeType", shape)
    check_layer_covered(ae, node.layer_index, f"{path}.layerIndex")
    if node.tensor_indices:
        last = len(node.tensor_indices) - 1
        check_latent(ae, node.tensor_indices[-1], f"{path}.tensorIndices.{last}")


def check_ae_location(index, path: str, shape) -> None:
    """An activation index at an AE hook point (ablation or within-layer gradient)."""
    location = index.activation_location_type.value
    loaded = served(shape)
    ae = loaded.for_location(location)
    if ae is None:
        raise _missing(location, f"{path}.activationLocationType", loaded)
    check_layer_covered(ae, index.layer_index, f"{path}.layerIndex")
    if "latent" in location and len(index.tensor_indices) == 2:
        check_latent(ae, index.tensor_indices[1], f"{path}.tensorIndices.1")


def dst_autoencoder(dst: DerivedScalarType, path: str, shape) -> AutoencoderInfo:
    """The AE a DST computes with, refusing DSTs whose AE is not loaded (or that TDB cannot serve)."""
    loaded = served(shape)
    if dst in _ERROR_DST_INPUTS:
        wanted = _ERROR_DST_INPUTS[dst]
        ae = next((a for a in loaded.all() if a.input_dst == wanted), None)
        if ae is None:
            raise _missing(f"{dst.value} (an autoencoder on {wanted})", path, loaded)
        return ae
    if dst not in _SERVED_FAMILY and dst not in WITHIN_LAYER_LATENT_DSTS:
        raise UnsupportedError(
            f"{dst.value} is not served (TDB's own server fails on it whatever the request)",
            path=path,
        )
    kind = "mlp" if "mlp_autoencoder" in dst.value else None
    kind = "attention" if "attention_autoencoder" in dst.value else kind
    ae = loaded.get(kind)
    if ae is None:
        what = "exactly one autoencoder loaded" if kind is None else f"an {kind} autoencoder"
        raise _missing(f"{dst.value} ({what})", path, loaded)
    if dst in OFFLINE_LATENT_DSTS and len(ae.layers) != _model_layers(shape):
        raise RequestValidationError(
            f"{dst.value} (offline latents) fails in TDB for an autoencoder covering some layers "
            f"only ({ae.name}: {list(ae.layers)}); use the online_ latents",
            path=path,
        )
    return ae


def _model_layers(shape) -> int:
    return shape.meta.n_layers


def check_ae_dst_use(dst, layer, layer_path, pass_type, pass_path, inference, path, shape):
    """Per-spec rules of an AE DST (layer covered, no backward latents, within-layer index)."""
    ae = dst_autoencoder(dst, path, shape)
    if layer is not None and dst not in WITHIN_LAYER_LATENT_DSTS:
        check_layer_covered(ae, layer, layer_path)
    if pass_type is not None and pass_type.value == "backward" and dst in _SERVED_FAMILY:
        raise RequestValidationError(
            f"{dst.value} has no backward values in TDB: passType must be forward", path=pass_path
        )
    if "final_activation_residual_grad" in dst.value:
        trace = inference.trace_config
        within = inference.activation_index_for_within_layer_grad
        through_v = trace is not None and getattr(trace.attention_trace_type, "value", None) == "V"
        if within is None and (trace is None or through_v):
            raise RequestValidationError(
                f"{dst.value} needs a trace config that is not a V trace (TDB fails without one)",
                path=path,
            )
    if dst in WITHIN_LAYER_LATENT_DSTS:
        index = inference.activation_index_for_within_layer_grad
        if index is None or index.activation_location_type.value != "online_autoencoder_latent":
            raise RequestValidationError(
                f"{dst.value} needs activationIndexForWithinLayerGrad at online_autoencoder_latent",
                path=path,
            )
    return ae

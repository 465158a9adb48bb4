"""Latents seen in vocabulary space (engine.md §9.5, §7.6): token writes and reads of latents,
and token-pair attribution of attention-AE latents.

A latent writes ``z[t, j] · W_write[j]``, so like an MLP neuron its list is its coefficient times
the shared list of its direction. Its read (MLP-type AEs) is nonlinear in the residual (through
the MLP), so each read is its own direction, recomputed at its token's residual row.
"""

from __future__ import annotations

import torch

from models.errors import RequestValidationError

from .tracing import latent_read_directions

LATENT_NODE_TYPES = ("autoencoder_latent", "mlp_autoencoder_latent", "attention_autoencoder_latent")


def _autoencoder(view, node_type: str, path: str | None):
    ae = view.autoencoders.for_node_type(node_type) if view.autoencoders is not None else None
    if ae is None:
        raise RequestValidationError(f"{node_type} nodes need their autoencoder loaded", path)
    return ae


def latent_write_projection(view, node, path: str | None = None):
    from ..tokens import Projection  # tokens imports this module

    node_type, idx, layer, _ = node
    ae = _autoencoder(view, node_type, path)
    t, j = idx[0], idx[-1]
    coef = float(view.fwd(ae.latent_point, layer)[t, j])
    w_out = view.weights.layers[layer].w_out
    return Projection(
        ("ae-write", ae.name, layer, j), coef, lambda: ae.write_vector(layer, j, w_out)
    )


def reads_tokens(view, node_type: str) -> bool:
    """Token read is defined for latents of MLP-type AEs (and MLP neurons)."""
    if node_type == "mlp_neuron":
        return True
    if node_type not in LATENT_NODE_TYPES or view.autoencoders is None:
        return False
    ae = view.autoencoders.for_node_type(node_type)
    return ae is not None and ae.kind == "mlp"


def latent_read_projections(view, nodes) -> list:
    """The read of each latent node (MLP-type AEs), one `latent_read_directions` call per AE and
    layer; keyed by its bytes (it depends on the token's residual row)."""
    from ..tokens import Projection

    by_part: dict[tuple, list[int]] = {}
    for n, (node_type, _, layer, _) in enumerate(nodes):
        ae = _autoencoder(view, node_type, None)
        if ae.input_dst == "resid_delta_attn":
            raise RequestValidationError(f"{node_type} nodes read no tokens ({ae.input_dst})")
        by_part.setdefault((ae.name, node_type, layer), []).append(n)
    out: list = [None] * len(nodes)
    for (name, node_type, layer), members in by_part.items():
        ae = _autoencoder(view, node_type, None)
        resid = view.fwd("resid.post_attn", layer)
        tokens = torch.tensor([nodes[n][1][0] % view.T for n in members], device=resid.device)
        latents = torch.tensor([nodes[n][1][-1] for n in members], device=resid.device)
        directions = latent_read_directions(view.weights, ae, layer, resid[tokens], latents)
        for n, direction in zip(members, directions, strict=True):
            key = ("ae-read", name, layer, nodes[n][1][-1], direction.cpu().numpy().tobytes())
            out[n] = Projection(key, 1.0, lambda direction=direction: direction)
    return out


def token_pair_attributions(view, nodes, count: int) -> list[dict | None]:
    """TopTokensAttendedTo per node (§7.6): attention-AE latents with a positive offline latent."""
    ae = view.autoencoders.attention if view.autoencoders is not None else None
    out: list[dict | None] = [None] * len(nodes)
    if ae is None or ae.input_dst != "resid_delta_attn":
        return out
    for n, (node_type, idx, layer, _) in enumerate(nodes):
        if node_type != "attention_autoencoder_latent" or layer not in ae.layers:
            continue
        part = ae.layers[layer]
        t, j = idx[0] % view.T, idx[-1]
        x = view.fwd("resid.delta_attn", layer)[t]
        if float(part.encode_one(x, j)) <= 0:
            continue
        probs = view.fwd("attn.qk_probs", layer)[t]  # [k, h]
        write = torch.einsum("kh,khd->kd", probs, view.vo(layer))
        attr = write @ part.w_enc[j]
        values, ids = torch.topk(attr, min(count, attr.numel()))
        out[n] = {"tokenIndices": ids.tolist(), "attributions": values.tolist()}
    return out

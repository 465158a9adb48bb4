"""Binding a request's latent nodes and generic AE names to the loaded AE (engine.md §9.3)."""

from __future__ import annotations

from dataclasses import replace

from models.errors import RequestValidationError


def bind_autoencoder(node, aes):
    """A TracedNode (and its downstream) with the AE of its latent node type attached."""
    if node is None:
        return None
    downstream = bind_autoencoder(node.downstream, aes)
    ae = aes.for_node_type(node.node_type)
    if node.node_type.endswith("autoencoder_latent") and ae is None:
        raise RequestValidationError(
            f"{node.node_type} nodes need their autoencoder loaded", "traceConfig.nodeIndex"
        )
    return replace(node, autoencoder=ae, downstream=downstream)


def with_specific_location(ablation, aes):
    """An ablation of ``online_autoencoder_latent`` acts on the single AE's latent point."""
    location = aes.specific_location(ablation.location)
    return ablation if location == ablation.location else replace(ablation, location=location)

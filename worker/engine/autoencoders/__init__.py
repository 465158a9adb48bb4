"""Sparse autoencoders: one ``Autoencoder`` type the engine sees, and a loader per file format
(TDB's ``<layer>.pt`` state dicts, SAELens's ``cfg.json`` + safetensors), engine.md §9.

``LoadedAutoencoders`` is the server's pair of slots (at most one MLP AE and one attention AE)
and answers "which AE does this node type / location / generic name mean".
"""

from __future__ import annotations

from dataclasses import dataclass

from models.autoencoders import AutoencoderInfo, ServedAutoencoders

from .loading import check_against_model, load_autoencoder
from .model import Autoencoder, AutoencoderLayer
from .tdb_format import AutoencoderFileError

__all__ = [
    "Autoencoder",
    "AutoencoderFileError",
    "AutoencoderLayer",
    "LoadedAutoencoders",
    "check_against_model",
    "load_autoencoder",
    "load_autoencoders",
]

_KIND_OF_NODE_TYPE = {"mlp_autoencoder_latent": "mlp", "attention_autoencoder_latent": "attention"}
_KIND_OF_LOCATION = {
    "online_mlp_autoencoder_latent": "mlp",
    "online_attention_autoencoder_latent": "attention",
}


@dataclass
class LoadedAutoencoders:
    mlp: Autoencoder | None = None
    attention: Autoencoder | None = None

    def all(self) -> list[Autoencoder]:
        return [ae for ae in (self.mlp, self.attention) if ae is not None]

    def get(self, kind: str | None) -> Autoencoder | None:
        """The AE of a slot; kind None is "the single loaded AE" (None unless exactly one)."""
        if kind is None:
            loaded = self.all()
            return loaded[0] if len(loaded) == 1 else None
        return self.mlp if kind == "mlp" else self.attention

    def for_node_type(self, node_type: str) -> Autoencoder | None:
        if node_type == "autoencoder_latent":
            return self.get(None)
        kind = _KIND_OF_NODE_TYPE.get(node_type)
        return None if kind is None else self.get(kind)

    def specific_location(self, location: str) -> str:
        """``online_autoencoder_latent`` names the single AE's latent point; others unchanged."""
        if location == "online_autoencoder_latent":
            ae = self.get(None)
            return location if ae is None else ae.latent_point
        return location

    def for_location(self, location: str) -> Autoencoder | None:
        kind = _KIND_OF_LOCATION.get(self.specific_location(location))
        return None if kind is None else self.get(kind)

    def info(self) -> ServedAutoencoders:
        """What the checks and the API know of these AEs (no tensors)."""

        def one(ae: Autoencoder | None) -> AutoencoderInfo | None:
            if ae is None:
                return None
            return AutoencoderInfo(
                ae.name,
                ae.kind,
                ae.input_dst,
                tuple(sorted(ae.layers)),
                ae.n_latents,
                ae.content_hash,
                ae.file_format,
            )

        return ServedAutoencoders(one(self.mlp), one(self.attention))


def load_autoencoders(meta, device, mlp: str | None, attention: str | None) -> LoadedAutoencoders:
    """The server's AEs from their arguments (``DIR`` or ``NAME=DIR``), checked against the model."""
    loaded = LoadedAutoencoders()
    for kind, argument in (("mlp", mlp), ("attention", attention)):
        if argument:
            ae = load_autoencoder(argument, device)
            check_against_model(ae, meta, kind)
            setattr(loaded, kind, ae)
    return loaded

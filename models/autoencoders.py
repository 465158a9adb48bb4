"""What the API and the checks know about the served autoencoders, without torch: name, slot,
input location, covered layers and latent count (after TDB's dead-latent omission), content hash.

The worker computes it when it loads the AEs (``LoadedModel.autoencoders.info()``); the API
computes the same from the files without torch (``models.autoencoder_files``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

_KIND_OF_NODE_TYPE = {"mlp_autoencoder_latent": "mlp", "attention_autoencoder_latent": "attention"}
_KIND_OF_LOCATION = {
    "online_mlp_autoencoder_latent": "mlp",
    "online_attention_autoencoder_latent": "attention",
}
ERROR_LOCATIONS = {
    "online_mlp_autoencoder_error": "mlp_post_act",
    "online_residual_mlp_autoencoder_error": "resid_delta_mlp",
    "online_residual_attention_autoencoder_error": "resid_delta_attn",
}


@dataclass(frozen=True)
class AutoencoderInfo:
    name: str
    kind: str  # "mlp" | "attention"
    input_dst: str  # mlp_post_act | resid_delta_mlp | resid_delta_attn
    layers: tuple[int, ...]
    n_latents: int
    content_hash: str = ""
    file_format: str = ""

    def to_json(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_json(cls, value: dict) -> AutoencoderInfo:
        return cls(**{**value, "layers": tuple(value["layers"])})


@dataclass(frozen=True)
class ServedAutoencoders:
    """The server's two AE slots; an empty one serves no AE request."""

    mlp: AutoencoderInfo | None = None
    attention: AutoencoderInfo | None = None

    def all(self) -> list[AutoencoderInfo]:
        return [ae for ae in (self.mlp, self.attention) if ae is not None]

    def get(self, kind: str | None) -> AutoencoderInfo | None:
        if kind is None:
            loaded = self.all()
            return loaded[0] if len(loaded) == 1 else None
        return self.mlp if kind == "mlp" else self.attention

    def for_node_type(self, node_type: str) -> AutoencoderInfo | None:
        if node_type == "autoencoder_latent":
            return self.get(None)
        kind = _KIND_OF_NODE_TYPE.get(node_type)
        return None if kind is None else self.get(kind)

    def for_location(self, location: str) -> AutoencoderInfo | None:
        if location == "online_autoencoder_latent":
            return self.get(None)
        if location in ERROR_LOCATIONS:
            wanted = ERROR_LOCATIONS[location]
            return next((ae for ae in self.all() if ae.input_dst == wanted), None)
        kind = _KIND_OF_LOCATION.get(location)
        return None if kind is None else self.get(kind)

    def model_info(self) -> dict:
        return {
            "hasMlpAutoencoder": self.mlp is not None,
            "mlpAutoencoderName": self.mlp.name if self.mlp else None,
            "hasAttentionAutoencoder": self.attention is not None,
            "attentionAutoencoderName": self.attention.name if self.attention else None,
        }

    def to_json(self) -> dict:
        return {k: (None if v is None else v.to_json()) for k, v in asdict_shallow(self).items()}

    @classmethod
    def from_json(cls, value: dict | None) -> ServedAutoencoders:
        value = value or {}
        return cls(
            **{
                k: None if value.get(k) is None else AutoencoderInfo.from_json(value[k])
                for k in ("mlp", "attention")
            }
        )

    def record(self) -> dict | None:
        """What a job and its runs record, and what joins the result-cache key: name and
        content hash per slot; None when no AE is served."""
        if not self.all():
            return None
        return {
            slot: None if ae is None else {"name": ae.name, "contentHash": ae.content_hash}
            for slot, ae in (("mlp", self.mlp), ("attention", self.attention))
        }


def asdict_shallow(served: ServedAutoencoders) -> dict:
    return {"mlp": served.mlp, "attention": served.attention}


NO_AUTOENCODERS = ServedAutoencoders()

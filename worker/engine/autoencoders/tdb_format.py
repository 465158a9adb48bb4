"""TDB's autoencoder files: a folder of ``<layer>.pt`` state dicts (engine.md §9.1, §9.9).

The input location is not in the files: it comes from an ``ae.json`` beside them
(``{"tdbInputDst": ...}``) or from the AE's name as TDB's registry names its AEs. Loading
reproduces TDB's server: dead-latent omission, including its rebuild of the AE with ``pre_bias``
0 and ReLU when it drops latents (engine.md §9.8), logged at load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from models.autoencoder_files import DEAD_FREQUENCY, AutoencoderFileError
from models.autoencoder_files import tdb_layer_files as layer_files

from .model import AutoencoderLayer

__all__ = ["AutoencoderFileError", "layer_files", "load_tdb_layers"]

logger = logging.getLogger(__name__)

_REQUIRED = ("pre_bias", "encoder.weight", "latent_bias", "decoder.weight")


def _activation(state: dict, path: Path) -> tuple[str, int | None]:
    name = state.get("activation", "ReLU")
    if name == "TopK":
        extra = state.get("activation_state_dict") or {}
        k = extra.get("k", state.get("activation.k"))
        if not isinstance(k, int) or k < 1:
            raise AutoencoderFileError(f"{path}: a TopK autoencoder needs a positive integer k")
        return "topk", k
    if name == "Identity":
        return "identity", None
    return "relu", None  # missing or unknown -> ReLU, as TDB


def read_layer(path: Path) -> tuple[AutoencoderLayer, torch.Tensor | None]:
    """One layer and its latents_activation_frequency (None if the file lacks it)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same start-up error
        raise AutoencoderFileError(f"{path} is not a readable state dict: {error}") from None
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise AutoencoderFileError(f"{path} lacks the tensor(s) {', '.join(missing)}")
    enc, dec = state["encoder.weight"], state["decoder.weight"]
    pre, lat = state["pre_bias"], state["latent_bias"]
    m, n = enc.shape if enc.dim() == 2 else (None, None)
    if (
        m is None
        or tuple(dec.shape) != (n, m)
        or tuple(pre.shape) != (n,)
        or tuple(lat.shape) != (m,)
    ):
        raise AutoencoderFileError(
            f"{path}: inconsistent widths: encoder.weight {tuple(enc.shape)} (want [m, n]), "
            f"decoder.weight {tuple(dec.shape)} (want [n, m]), pre_bias {tuple(pre.shape)} "
            f"(want [n]), latent_bias {tuple(lat.shape)} (want [m])"
        )
    activation, k = _activation(state, path)
    layer = AutoencoderLayer(pre.float(), enc.float(), lat.float(), dec.float(), activation, k)
    return layer, state.get("latents_activation_frequency")


def omit_dead_latents(
    name: str, layers: dict[int, AutoencoderLayer], frequencies: dict[int, torch.Tensor | None]
) -> int:
    """TDB's dead-latent omission, in place; returns D, the number of latents dropped per layer."""
    counts = []
    for layer, freq in frequencies.items():
        if freq is None:
            return 0
        if not bool(freq.any()):
            raise AutoencoderFileError(
                f"autoencoder {name!r} layer {layer}: every latents_activation_frequency is 0"
            )
        counts.append(int((freq < DEAD_FREQUENCY).sum()))
    dropped = min(counts) if counts else 0
    if dropped == 0:
        return 0
    for layer, ae in list(layers.items()):
        keep = ae.n_latents - dropped
        layers[layer] = AutoencoderLayer(
            torch.zeros_like(ae.pre_bias),
            ae.w_enc[:keep].contiguous(),
            ae.latent_bias[:keep].contiguous(),
            ae.w_dec[:, :keep],
        )
    logger.warning(
        "autoencoder %s: TDB's dead-latent omission keeps the first %d latents of every layer "
        "and, as TDB's rebuild does, runs with pre_bias 0 and ReLU",
        name,
        keep,
    )
    return dropped


def load_tdb_layers(folder: Path, name: str) -> tuple[dict[int, AutoencoderLayer], int]:
    files = layer_files(folder)
    if not files:
        raise AutoencoderFileError(f"{folder} holds no <layer>.pt files")
    layers, frequencies = {}, {}
    for layer, path in sorted(files.items()):
        layers[layer], frequencies[layer] = read_layer(path)
    return layers, omit_dead_latents(name, layers, frequencies)

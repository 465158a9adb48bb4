"""Loading an AE argument (``DIR`` or ``NAME=DIR``) in either file format, checked against the
model at load, so that a wrong file is a clear start-up error and never a silent zero (§9.9)."""

from __future__ import annotations

from models.autoencoder_files import (
    AutoencoderFileError,
    content_hash,
    input_dst_of,
    split_argument,
)

from .model import Autoencoder
from .saelens_format import layer_folders, load_saelens_layers
from .tdb_format import layer_files, load_tdb_layers


def load_autoencoder(argument: str, device=None) -> Autoencoder:
    name, folder = split_argument(argument)
    if not folder.is_dir():
        raise AutoencoderFileError(f"autoencoder folder {folder} does not exist")
    if layer_files(folder):
        layers, omitted = load_tdb_layers(folder, name)
        ae = Autoencoder(
            name, input_dst_of(folder, name), layers, "tdb", content_hash(folder), omitted
        )
    elif layer_folders(folder):
        layers, dst = load_saelens_layers(folder)
        ae = Autoencoder(name, dst, layers, "saelens", content_hash(folder))
    else:
        raise AutoencoderFileError(
            f"{folder} is neither a TDB autoencoder (<layer>.pt files) nor a SAELens one "
            "(cfg.json + sae_weights.safetensors, per layer)"
        )
    if device is not None:
        ae.layers = {layer: part.to(device) for layer, part in ae.layers.items()}
    return ae


def check_against_model(ae: Autoencoder, meta, expected_kind: str) -> None:
    """Layers, widths and slot against the model (``expected_kind``: the slot it was given for)."""
    if ae.kind != expected_kind:
        raise AutoencoderFileError(
            f"autoencoder {ae.name!r} reads {ae.input_dst}, an {ae.kind} location; it cannot be "
            f"the {expected_kind} autoencoder"
        )
    width = meta.d_mlp if ae.input_dst == "mlp_post_act" else meta.d_model
    widths = {part.n_latents for part in ae.layers.values()}
    if len(widths) != 1:
        raise AutoencoderFileError(f"autoencoder {ae.name!r}: layers have different latent counts")
    for layer, part in ae.layers.items():
        if not 0 <= layer < meta.n_layers:
            raise AutoencoderFileError(
                f"autoencoder {ae.name!r} has layer {layer}; {meta.name} has layers 0-{meta.n_layers - 1}"
            )
        if part.n_inputs != width:
            raise AutoencoderFileError(
                f"autoencoder {ae.name!r} layer {layer}: d_in {part.n_inputs} does not match "
                f"{ae.input_dst} of {meta.name}, which has width {width}"
            )

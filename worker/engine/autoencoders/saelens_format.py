"""SAELens's autoencoder files: per layer a folder with ``cfg.json`` and
``sae_weights.safetensors`` (SAELens 6 ``save_model``, or the pre-6 flat ``cfg.json``),
engine.md §9.9. No dead-latent omission: a SAELens AE is used as SAELens defines it.

``W_enc`` [d_in, d_sae] is TDB's ``encoder.weight``ᵀ, ``W_dec`` [d_sae, d_in] its
``decoder.weight``ᵀ, ``b_enc`` its ``latent_bias`` and ``b_dec`` its ``pre_bias``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors.torch import load_file

from .model import AutoencoderLayer
from .tdb_format import AutoencoderFileError

WEIGHTS = "sae_weights.safetensors"
_HOOKS = (
    (re.compile(r"blocks\.(\d+)\.mlp\.hook_post"), "mlp_post_act"),
    (re.compile(r"blocks\.(\d+)\.hook_mlp_out"), "resid_delta_mlp"),
    (re.compile(r"blocks\.(\d+)\.hook_attn_out"), "resid_delta_attn"),
)
_ARCHITECTURES = ("standard", "topk", "jumprelu")


def is_saelens_layer(folder: Path) -> bool:
    return (folder / "cfg.json").is_file()


def layer_folders(folder: Path) -> list[Path]:
    """The folder itself if it is one SAELens SAE, else its sub-folders that are."""
    if is_saelens_layer(folder):
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_dir() and is_saelens_layer(p))


def _config(folder: Path) -> dict:
    cfg = json.loads((folder / "cfg.json").read_text(encoding="utf-8"))
    metadata = cfg.get("metadata") or {}
    return {**metadata, **cfg}  # pre-6 files are flat; SAELens 6 keeps hook_name in metadata


def hook_of(cfg: dict, folder: Path) -> tuple[int, str]:
    hook = cfg.get("hook_name")
    for pattern, dst in _HOOKS:
        match = pattern.fullmatch(str(hook))
        if match:
            return int(match.group(1)), dst
    raise AutoencoderFileError(
        f"{folder}/cfg.json: hook_name {hook!r} is not one actq serves "
        "(blocks.L.mlp.hook_post, blocks.L.hook_mlp_out, blocks.L.hook_attn_out)"
    )


def _refuse_unsupported(cfg: dict, folder: Path) -> str:
    where = f"{folder}/cfg.json"
    architecture = cfg.get("architecture", "standard")
    if architecture not in _ARCHITECTURES:
        raise AutoencoderFileError(
            f"{where}: architecture {architecture!r} is not supported (only {', '.join(_ARCHITECTURES)})"
        )
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise AutoencoderFileError(
            f"{where}: normalize_activations {cfg['normalize_activations']!r} is not supported "
            "(only none)"
        )
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise AutoencoderFileError(
            f"{where}: reshape_activations {cfg['reshape_activations']!r} is not supported (only none)"
        )
    if cfg.get("hook_head_index") is not None:
        raise AutoencoderFileError(f"{where}: hook_head_index must be null")
    return architecture


def read_layer(folder: Path) -> tuple[int, str, AutoencoderLayer]:
    cfg = _config(folder)
    architecture = _refuse_unsupported(cfg, folder)
    layer, dst = hook_of(cfg, folder)
    if not (folder / WEIGHTS).is_file():
        raise AutoencoderFileError(f"{folder} lacks {WEIGHTS}")
    tensors = load_file(str(folder / WEIGHTS), device="cpu")
    needed = ["W_enc", "b_enc", "W_dec", "b_dec"] + (
        ["threshold"] if architecture == "jumprelu" else []
    )
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise AutoencoderFileError(f"{folder}/{WEIGHTS} lacks the tensor(s) {', '.join(missing)}")
    w_enc, w_dec = tensors["W_enc"].float(), tensors["W_dec"].float()
    n, m = w_enc.shape if w_enc.dim() == 2 else (None, None)
    shapes_ok = (
        n is not None
        and tuple(w_dec.shape) == (m, n)
        and tuple(tensors["b_enc"].shape) == (m,)
        and tuple(tensors["b_dec"].shape) == (n,)
        and cfg.get("d_in", n) == n
        and cfg.get("d_sae", m) == m
    )
    if not shapes_ok:
        raise AutoencoderFileError(
            f"{folder}: inconsistent widths: W_enc {tuple(w_enc.shape)} (want [d_in, d_sae]), "
            f"W_dec {tuple(w_dec.shape)}, b_enc {tuple(tensors['b_enc'].shape)}, "
            f"b_dec {tuple(tensors['b_dec'].shape)}, cfg d_in {cfg.get('d_in')} d_sae {cfg.get('d_sae')}"
        )
    k = cfg.get("k") if architecture == "topk" else None
    if architecture == "topk" and (not isinstance(k, int) or k < 1):
        raise AutoencoderFileError(f"{folder}/cfg.json: a topk SAE needs a positive integer k")
    activation = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}[architecture]
    ae = AutoencoderLayer(
        pre_bias=tensors["b_dec"].float(),
        w_enc=w_enc.T.contiguous(),
        latent_bias=tensors["b_enc"].float(),
        w_dec=w_dec.T,  # [n, m] over SAELens's [m, n] rows: the layout AutoencoderLayer keeps
        activation=activation,
        k=k,
        threshold=tensors["threshold"].float() if architecture == "jumprelu" else None,
        subtract_pre_bias=bool(cfg.get("apply_b_dec_to_input", True)),
    )
    return layer, dst, ae


def load_saelens_layers(folder: Path) -> tuple[dict[int, AutoencoderLayer], str]:
    folders = layer_folders(folder)
    if not folders:
        raise AutoencoderFileError(f"{folder} holds no SAELens cfg.json")
    layers, inputs = {}, set()
    for sub in folders:
        layer, dst, ae = read_layer(sub)
        if layer in layers:
            raise AutoencoderFileError(f"{folder}: two SAEs for layer {layer}")
        layers[layer] = ae
        inputs.add(dst)
    if len(inputs) != 1:
        raise AutoencoderFileError(
            f"{folder}: its SAEs read different locations ({', '.join(sorted(inputs))}); one "
            "autoencoder reads one location"
        )
    return layers, inputs.pop()

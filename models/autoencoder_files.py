"""What an AE folder serves, read without torch: the API's view of the worker's AEs.

The API must refuse an out-of-range latent or an uncovered layer before it queues a job, and it
does not import torch. So it reads the same files the worker loads, lightly:

* SAELens folders: ``cfg.json`` (hook name, ``d_in``, ``d_sae``) and the JSON header of
  ``sae_weights.safetensors`` (shapes);
* TDB ``<layer>.pt`` files (a zip holding a pickle): the pickle is read with an unpickler that
  knows only the few classes a state dict uses and builds shape stubs instead of tensors; the one
  tensor whose values matter, ``latents_activation_frequency``, is read from its raw float32
  bytes, so the latent count after TDB's dead-latent omission (engine.md §9.3) is exact.

The worker computes the same facts from the tensors it loads; tests check that both agree.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import struct
import zipfile
from array import array
from collections import OrderedDict
from pathlib import Path

from models.autoencoders import AutoencoderInfo
from models.errors import ActqError

DEAD_FREQUENCY = 1e-8
INPUT_KINDS = {"mlp_post_act": "mlp", "resid_delta_mlp": "mlp", "resid_delta_attn": "attention"}
_NAME_HINTS = (
    ("mlp-post-act", "mlp_post_act"),
    ("mlp_post_act", "mlp_post_act"),
    ("resid-delta-mlp", "resid_delta_mlp"),
    ("resid_delta_mlp", "resid_delta_mlp"),
    ("resid-delta-attn", "resid_delta_attn"),
    ("resid_delta_attn", "resid_delta_attn"),
)
SAELENS_HOOKS = (
    (re.compile(r"blocks\.(\d+)\.mlp\.hook_post"), "mlp_post_act"),
    (re.compile(r"blocks\.(\d+)\.hook_mlp_out"), "resid_delta_mlp"),
    (re.compile(r"blocks\.(\d+)\.hook_attn_out"), "resid_delta_attn"),
)


class AutoencoderFileError(ActqError):
    """An AE folder that cannot be served: a start-up error that says what is wrong."""

    status = 400
    type = "autoencoder_file"


def split_argument(argument: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (named after the folder)."""
    name, sep, directory = str(argument).partition("=")
    if not sep or "/" in name:
        directory, name = str(argument), Path(str(argument)).name
    return name, Path(directory)


def content_hash(folder: Path) -> str:
    """sha256 over the AE's files (names and bytes), so runs record exactly what served them."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def input_dst_of(folder: Path, name: str, given: str | None = None) -> str:
    """A TDB AE's input DST: given, from ae.json, or from its name (TDB's registry names)."""
    sidecar = folder / "ae.json"
    if given is None and sidecar.is_file():
        given = json.loads(sidecar.read_text(encoding="utf-8")).get("tdbInputDst")
    if given is None:
        given = next(
            (dst for hint, dst in _NAME_HINTS if hint in name or hint in folder.name), None
        )
    if given not in INPUT_KINDS:
        raise AutoencoderFileError(
            f"cannot tell what autoencoder {name!r} ({folder}) reads: put an ae.json beside its "
            f'files with {{"tdbInputDst": one of {sorted(INPUT_KINDS)}}}, or name it after its '
            "input (e.g. ae-mlp-post-act-..., ae-resid-delta-mlp-..., ae-resid-delta-attn-...)"
        )
    return given


def tdb_layer_files(folder: Path) -> dict[int, Path]:
    return {
        int(p.stem): p
        for p in folder.iterdir()
        if p.suffix == ".pt" and re.fullmatch(r"\d+", p.stem)
    }


def saelens_folders(folder: Path) -> list[Path]:
    if (folder / "cfg.json").is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "cfg.json").is_file())


# -- TDB .pt without torch ----------------------------------------------------------------------


class _Storage:
    def __init__(self, dtype: str, key: str):
        self.dtype, self.key = dtype, key


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple):
        self.storage, self.offset, self.shape = storage, offset, tuple(size)


def _rebuild_tensor(storage, offset, size, stride, *rest):
    return _Tensor(storage, offset, size)


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict")

    def persistent_load(self, pid):
        _, storage_type, key, _location, _numel = pid
        dtype = storage_type if isinstance(storage_type, str) else "FloatStorage"
        return _Storage(dtype, str(key))


def read_pt_state(path: Path) -> tuple[dict, zipfile.ZipFile, str]:
    """(state dict of stubs, the open zip, its record prefix) of a torch.save file."""
    try:
        archive = zipfile.ZipFile(path)
        pickle_name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        state = _StateDictUnpickler(archive.open(pickle_name)).load()
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same start-up error
        raise AutoencoderFileError(f"{path} is not a readable state dict: {error}") from None
    return state, archive, pickle_name[: -len("data.pkl")]


def _float_values(archive: zipfile.ZipFile, prefix: str, tensor: _Tensor) -> array:
    if tensor.storage.dtype != "FloatStorage":
        raise AutoencoderFileError("latents_activation_frequency must be float32")
    data = array("f")
    data.frombytes(archive.read(f"{prefix}data/{tensor.storage.key}"))
    count = 1
    for size in tensor.shape:
        count *= size
    return data[tensor.offset : tensor.offset + count]


def _tdb_layer(path: Path) -> tuple[int, int, int | None]:
    """(n_inputs, n_latents, dead latents or None) of one TDB layer file."""
    state, archive, prefix = read_pt_state(path)
    with archive:
        enc = state.get("encoder.weight")
        if not isinstance(enc, _Tensor) or len(enc.shape) != 2:
            raise AutoencoderFileError(f"{path} lacks a 2-D encoder.weight")
        freq = state.get("latents_activation_frequency")
        dead = None
        if isinstance(freq, _Tensor):
            values = _float_values(archive, prefix, freq)
            dead = sum(1 for v in values if v < DEAD_FREQUENCY)
        return enc.shape[1], enc.shape[0], dead


def _tdb_info(name: str, folder: Path) -> AutoencoderInfo:
    layers = {layer: _tdb_layer(path) for layer, path in sorted(tdb_layer_files(folder).items())}
    deads = [dead for _, _, dead in layers.values()]
    dropped = 0 if any(d is None for d in deads) else min(deads)
    n_latents = next(iter(layers.values()))[1] - dropped
    dst = input_dst_of(folder, name)
    return AutoencoderInfo(
        name, INPUT_KINDS[dst], dst, tuple(layers), n_latents, content_hash(folder), "tdb"
    )


# -- SAELens without torch ----------------------------------------------------------------------


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def saelens_hook(cfg: dict, folder: Path) -> tuple[int, str]:
    hook = {**(cfg.get("metadata") or {}), **cfg}.get("hook_name")
    for pattern, dst in SAELENS_HOOKS:
        match = pattern.fullmatch(str(hook))
        if match:
            return int(match.group(1)), dst
    raise AutoencoderFileError(
        f"{folder}/cfg.json: hook_name {hook!r} is not one actq serves "
        "(blocks.L.mlp.hook_post, blocks.L.hook_mlp_out, blocks.L.hook_attn_out)"
    )


def _saelens_info(name: str, folder: Path) -> AutoencoderInfo:
    layers, inputs, widths = [], set(), set()
    for sub in saelens_folders(folder):
        layer, dst = saelens_hook(json.loads((sub / "cfg.json").read_text(encoding="utf-8")), sub)
        shapes = safetensors_shapes(sub / "sae_weights.safetensors")
        layers.append(layer)
        inputs.add(dst)
        widths.add(shapes["W_enc"][1])
    if len(inputs) != 1 or len(widths) != 1:
        raise AutoencoderFileError(f"{folder}: its SAEs read different locations or widths")
    dst = inputs.pop()
    return AutoencoderInfo(
        name, INPUT_KINDS[dst], dst, tuple(sorted(layers)), widths.pop(), content_hash(folder),
        "saelens",
    )  # fmt: skip


def read_autoencoder_info(argument: str) -> AutoencoderInfo:
    """The facts about an AE argument (``DIR`` or ``NAME=DIR``) the API validates with."""
    name, folder = split_argument(argument)
    if not folder.is_dir():
        raise AutoencoderFileError(f"autoencoder folder {folder} does not exist")
    if tdb_layer_files(folder):
        return _tdb_info(name, folder)
    if saelens_folders(folder):
        return _saelens_info(name, folder)
    raise AutoencoderFileError(
        f"{folder} is neither a TDB autoencoder (<layer>.pt files) nor a SAELens one "
        "(cfg.json + sae_weights.safetensors, per layer)"
    )

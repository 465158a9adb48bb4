"""Checkpoint files to tensors, and the built-in tiny-gpt2 written to disk on first use.

``load_state_dict`` reads a GPT-2 checkpoint (safetensors or a PyTorch pickle, sharded or not)
straight from disk, never from the network, into float32 tensors named as Hugging Face's
``GPT2LMHeadModel`` names them, whatever prefix the checkpoint was saved with.

``ensure_tiny_gpt2`` generates the built-in model so that the service, its demo and its tests run
on a machine with no network: GPT-2's architecture and real BPE vocabulary, the shape in
``models.model_meta.TINY_GPT2_CONFIG``, and random weights from a fixed seed. Plain N(0, 0.02)
weights would give a model whose attention is nearly uniform and whose logits are nearly flat, so
the weights are scaled up the way the golden oracle model's are (see ``_INIT_STD``), which makes
attention sharp and logits spread. Draws are made in float64 on a CPU ``torch.Generator`` and
rounded to float32, so every machine writes the same bytes. The directory is written to a temporary
sibling and renamed into place, so processes starting together never see half a model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.errors import NotFoundError
from models.model_meta import (
    TINY_GPT2_CONFIG,
    ModelMeta,
    tiny_gpt2_dir,
    weight_files,
)
from models.tokenizer import EOT_STRING, builtin_vocab_files

logger = logging.getLogger(__name__)

TINY_GPT2_SEED = 20240611

# Standard deviation of each generated weight, by the last part of its name. Gains are 1 + N(0, sd).
_INIT_STD = {
    "wte.weight": 0.25,
    "wpe.weight": 0.35,
    "attn.c_attn.weight.q": 0.25,
    "attn.c_attn.weight.k": 0.25,
    "attn.c_attn.weight.v": 0.20,
    "attn.c_proj.weight": 0.12,
    "mlp.c_fc.weight": 0.20,
    "mlp.c_proj.weight": 0.08,
    "bias": 0.02,
    "ln.weight": 0.20,
    "ln.bias": 0.05,
}

_PREFIX = "transformer."
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


# --- the compute dtype -----------------------------------------------------------------------

# ACTQ_DTYPE -> the dtype weights and activations are computed in (families.md: float32 unless
# configured otherwise; README "Model families" states the tolerance of the reduced ones).
COMPUTE_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def compute_dtype(name: str | None = None) -> torch.dtype:
    """The dtype named by `name`, else by ACTQ_DTYPE (default float32); a clear ValueError naming
    ACTQ_DTYPE and the allowed values for anything else."""
    value = name if name is not None else os.environ.get("ACTQ_DTYPE", "float32")
    key = value.strip()
    if key not in COMPUTE_DTYPES:
        raise ValueError(
            f"ACTQ_DTYPE={value!r} is not a compute dtype; use one of {', '.join(COMPUTE_DTYPES)}"
        )
    return COMPUTE_DTYPES[key]


# --- reading checkpoints ----------------------------------------------------------------------


def load_state_dict(meta: ModelMeta, data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The model's float32 state dict with ``GPT2LMHeadModel`` names (``transformer.h.0...``).

    ``lm_head.weight`` is present only if the checkpoint stores it (it is tied to ``wte``
    otherwise). The built-in tiny-gpt2 is generated first if need be.
    """
    return normalise_state_dict(load_raw_state_dict(meta, data_dir))


def load_config(meta: ModelMeta, data_dir: str | Path | None = None) -> dict:
    """The model's config.json as a dict (the built-in model's constant config)."""
    if meta.builtin:
        return dict(TINY_GPT2_CONFIG)
    return json.loads((meta.path / "config.json").read_text(encoding="utf-8"))


def load_raw_state_dict(
    meta: ModelMeta, data_dir: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint (all shards), named and typed as saved."""
    path = ensure_tiny_gpt2(data_dir) if meta.builtin else meta.path
    if path is None:
        raise NotFoundError(f"model {meta.name!r} has no local directory")
    files = weight_files(path)
    if not files:
        raise NotFoundError(
            f"{path} holds no model.safetensors or pytorch_model.bin (nor a sharded index)"
        )
    raw: dict[str, torch.Tensor] = {}
    for file in files:
        raw.update(_read_weights(file))
    return raw


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise NotFoundError(f"weights file {file} is missing")
    if file.name.endswith(".safetensors"):
        return load_file(str(file), device="cpu")
    return torch.load(str(file), map_location="cpu", weights_only=True)


def normalise_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename to ``GPT2LMHeadModel`` keys, drop attention-mask buffers, cast to float32."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = _canonical_name(key)
        if name is None:
            continue
        out[name] = tensor.to(torch.float32).contiguous()
    if _PREFIX + "wte.weight" not in out:
        raise NotFoundError("checkpoint has no token embedding (transformer.wte.weight)")
    return out


def _canonical_name(key: str) -> str | None:
    if key.endswith(_IGNORED_SUFFIXES):
        return None
    if key.startswith("lm_head."):
        return key
    for prefix in ("model.transformer.", "transformer.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    return _PREFIX + key


# --- the built-in model -----------------------------------------------------------------------


def ensure_tiny_gpt2(data_dir: str | Path | None = None) -> Path:
    """The built-in model's directory, generating it first if it does not exist yet."""
    target = tiny_gpt2_dir(data_dir)
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-gpt2-", dir=target.parent))
    scratch.chmod(0o755)
    try:
        write_tiny_gpt2(scratch)
        try:
            os.rename(scratch, target)
            logger.info("Generated the built-in tiny-gpt2 model in %s", target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
            # Another process finished first; its copy is identical.
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def write_tiny_gpt2(directory: Path) -> None:
    """Write the built-in model in Hugging Face format into an existing empty directory."""
    save_file(
        tiny_gpt2_state_dict(), str(directory / "model.safetensors"), metadata={"format": "pt"}
    )
    _write_json(directory / "config.json", TINY_GPT2_CONFIG)
    _write_json(
        directory / "generation_config.json",
        {"bos_token_id": 50256, "eos_token_id": 50256},
    )
    _write_json(directory / "tokenizer_config.json", _tokenizer_config())
    _write_json(
        directory / "special_tokens_map.json",
        {"bos_token": EOT_STRING, "eos_token": EOT_STRING, "unk_token": EOT_STRING},
    )
    vocab, merges = builtin_vocab_files()
    shutil.copyfile(vocab, directory / "vocab.json")
    shutil.copyfile(merges, directory / "merges.txt")


def tiny_gpt2_state_dict() -> dict[str, torch.Tensor]:
    """The built-in model's weights (no ``lm_head``: it is tied to ``wte``), same on every run."""
    config = TINY_GPT2_CONFIG
    d, ctx, vocab = config["n_embd"], config["n_positions"], config["vocab_size"]
    d_mlp = config["n_inner"] or 4 * d
    generator = torch.Generator(device="cpu").manual_seed(TINY_GPT2_SEED)

    def normal(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        draw = torch.randn(*shape, generator=generator, dtype=torch.float64)
        return (draw * std + mean).to(torch.float32)

    tensors = {
        "wte.weight": normal(vocab, d, std=_INIT_STD["wte.weight"]),
        "wpe.weight": normal(ctx, d, std=_INIT_STD["wpe.weight"]),
    }
    for layer in range(config["n_layer"]):
        tensors.update(_layer_weights(f"h.{layer}.", d, d_mlp, normal))
    tensors["ln_f.weight"] = normal(d, std=_INIT_STD["ln.weight"], mean=1.0)
    tensors["ln_f.bias"] = normal(d, std=_INIT_STD["ln.bias"])
    return {_PREFIX + name: tensor for name, tensor in tensors.items()}


def _layer_weights(prefix: str, d: int, d_mlp: int, normal) -> dict[str, torch.Tensor]:
    """One block's weights, drawn in a fixed order. c_attn's columns are [Q | K | V]."""
    std = _INIT_STD
    c_attn = torch.cat(
        [normal(d, d, std=std[f"attn.c_attn.weight.{part}"]) for part in "qkv"], dim=1
    )
    return {
        prefix + "ln_1.weight": normal(d, std=std["ln.weight"], mean=1.0),
        prefix + "ln_1.bias": normal(d, std=std["ln.bias"]),
        prefix + "attn.c_attn.weight": c_attn,
        prefix + "attn.c_attn.bias": normal(3 * d, std=std["bias"]),
        prefix + "attn.c_proj.weight": normal(d, d, std=std["attn.c_proj.weight"]),
        prefix + "attn.c_proj.bias": normal(d, std=std["bias"]),
        prefix + "ln_2.weight": normal(d, std=std["ln.weight"], mean=1.0),
        prefix + "ln_2.bias": normal(d, std=std["ln.bias"]),
        prefix + "mlp.c_fc.weight": normal(d, d_mlp, std=std["mlp.c_fc.weight"]),
        prefix + "mlp.c_fc.bias": normal(d_mlp, std=std["bias"]),
        prefix + "mlp.c_proj.weight": normal(d_mlp, d, std=std["mlp.c_proj.weight"]),
        prefix + "mlp.c_proj.bias": normal(d, std=std["bias"]),
    }


def _tokenizer_config() -> dict:
    special = {
        "content": EOT_STRING,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": TINY_GPT2_CONFIG["n_positions"],
        "add_prefix_space": False,
        "add_bos_token": False,
        "bos_token": EOT_STRING,
        "eos_token": EOT_STRING,
        "unk_token": EOT_STRING,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {"50256": special},
    }


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")

"""Which model a name means, and its shape, without loading any weights.

The web process checks every request against the model's shape (layers, heads, widths, context,
vocabulary) before it queues a job, and the worker loads the weights the same name points at. Both
call ``resolve_model``, which reads only ``config.json`` (and hashes the weights file once per
process for ``revision``), so this module imports neither torch nor transformers.

A model spec is one of:

* ``tiny-gpt2``: the built-in model, generated deterministically on first use by
  ``worker.engine.loading.ensure_tiny_gpt2`` into ``<data_dir>/models/tiny-gpt2``. Its shape is the
  constant ``TINY_GPT2_CONFIG`` below: GPT-2 architecture with GPT-2's real 50257-token BPE
  vocabulary, 2 layers, 4 heads, d_model 64 (d_head 16, d_mlp 256), context 128, ``gelu_new``,
  layer-norm epsilon 1e-5, tied embeddings.
* a local directory in Hugging Face format (``config.json``, weights, tokenizer files); it is served
  under its last path component.
* ``NAME=SPEC``: any of the other forms, served as ``NAME``.
* a Hugging Face hub id (``gpt2``, ``openai-community/gpt2-medium``, ...), looked up only in the
  local Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``); actq never downloads.

The families of ``models.families`` are accepted (``model_type`` ``gpt2``, ``gpt_neox``,
``llama``, ``mistral``, ``qwen2``); anything else is a 422 naming ``model_type``. For families other
than GPT-2 the vocabulary size V is the tokenizer's (``tokenizer.json``), which may be smaller than
the embedding's rows (padding rows are never used).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from models.errors import NotFoundError, UnsupportedError
from models.families import family_shape, tokenizer_vocab_size

TINY_GPT2_NAME = "tiny-gpt2"
TINY_GPT2_REVISION = "tiny-gpt2-v1"

# The built-in model's Hugging Face config (written verbatim to its config.json).
TINY_GPT2_CONFIG: dict = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.0,
    "bos_token_id": 50256,
    "embd_pdrop": 0.0,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_embd": 64,
    "n_head": 4,
    "n_inner": None,
    "n_layer": 2,
    "n_positions": 128,
    "reorder_and_upcast_attn": False,
    "resid_pdrop": 0.0,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 50257,
}

# Weight files in the order they are looked for; an index file lists shards.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# Hub ids that moved to an organisation; the cache may hold either spelling.
_HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}

_HOW_TO_PROVIDE = (
    "actq never downloads models: download it into the Hugging Face cache on a machine with "
    "network access (e.g. `huggingface-cli download {id}`) and copy the cache here (set HF_HOME "
    "or HF_HUB_CACHE), or pass a local directory in Hugging Face format instead"
)


@dataclass(frozen=True)
class ModelMeta:
    """A served model's identity and shape, read from its config.

    ``path`` is the local Hugging Face-format directory, or None for the built-in tiny-gpt2 before
    it has been generated. ``revision`` identifies the weights: a hub snapshot's commit hash, a
    sha256 prefix of a directory's weight files, or ``TINY_GPT2_REVISION``.
    """

    name: str
    source: str
    path: Path | None
    revision: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    n_ctx: int
    vocab_size: int
    activation: str
    layer_norm_epsilon: float
    builtin: bool = False
    family: str = "gpt2"
    n_kv_heads: int = 0  # 0: = n_heads
    absent_locations: tuple[str, ...] = ()  # hook points the family does not have
    absent_dsts: tuple[str, ...] = ()  # derived scalars it therefore does not have


def default_data_dir() -> Path:
    """Where actq keeps its own files (the generated tiny-gpt2, the embedded database)."""
    env = os.environ.get("ACTQ_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".actq"


def tiny_gpt2_dir(data_dir: str | Path | None = None) -> Path:
    """The directory the built-in model is (or will be) generated into."""
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return base / "models" / TINY_GPT2_NAME


_cache: dict[tuple[str, str | None, str], ModelMeta] = {}
_cache_lock = threading.Lock()


def resolve_model(spec: str, data_dir: str | Path | None = None) -> ModelMeta:
    """The ModelMeta a model spec names (see the module docstring for the forms).

    Raises NotFoundError when nothing local matches and UnsupportedError for a non-GPT-2 config.
    Results are cached per (spec, data_dir, hub cache location) for the life of the process.
    """
    spec = spec.strip()
    if not spec:
        raise NotFoundError("empty model name")
    if spec == TINY_GPT2_NAME:
        # Not cached: ``path`` changes once the model has been generated, and this is cheap.
        return _tiny_meta(spec, TINY_GPT2_NAME, data_dir)
    key = (spec, None if data_dir is None else str(data_dir), str(hf_hub_cache_dir()))
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    meta = _resolve_uncached(spec, data_dir)
    if not meta.builtin:
        with _cache_lock:
            _cache[key] = meta
    return meta


def _resolve_uncached(spec: str, data_dir: str | Path | None) -> ModelMeta:
    name, target = _split_name(spec)
    if target == TINY_GPT2_NAME:
        return _tiny_meta(spec, name or TINY_GPT2_NAME, data_dir)
    directory = Path(target).expanduser()
    if directory.is_dir():
        path = directory.resolve()
        return _meta_from_dir(name or path.name, spec, path, _weights_revision(path))
    if _looks_like_path(target):
        raise NotFoundError(f"model directory {target!r} does not exist")
    snapshot, commit = _find_in_hf_cache(target)
    return _meta_from_dir(name or target, spec, snapshot, commit)


def _split_name(spec: str) -> tuple[str | None, str]:
    """``NAME=SPEC`` -> (NAME, SPEC); anything else -> (None, spec)."""
    if "=" in spec:
        name, _, target = spec.partition("=")
        name, target = name.strip(), target.strip()
        if not name or not target:
            raise NotFoundError(f"model spec {spec!r}: expected NAME=DIR")
        return name, target
    return None, spec


def _looks_like_path(target: str) -> bool:
    return target.startswith(("/", ".", "~")) or target.count("/") > 1


def _tiny_meta(source: str, name: str, data_dir: str | Path | None) -> ModelMeta:
    directory = tiny_gpt2_dir(data_dir)
    path = directory if (directory / "config.json").is_file() else None
    return _meta_from_config(
        TINY_GPT2_CONFIG,
        name=name,
        source=source,
        path=path,
        revision=TINY_GPT2_REVISION,
        builtin=True,
    )


def _meta_from_dir(name: str, source: str, path: Path, revision: str) -> ModelMeta:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise NotFoundError(
            f"{path} has no config.json; a model directory must be in Hugging Face format "
            "(config.json, model.safetensors or pytorch_model.bin, vocab.json and merges.txt)"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NotFoundError(f"cannot read {config_file}: {exc}") from exc
    return _meta_from_config(config, name=name, source=source, path=path, revision=revision)


def _meta_from_config(
    config: dict, *, name: str, source: str, path: Path | None, revision: str, builtin: bool = False
) -> ModelMeta:
    shape = family_shape(config, source)
    if shape.family == "gpt2":
        _check_gpt2(config, source)
        vocab_size = shape.config_vocab_size
    else:
        vocab_size = _tokenizer_vocab_size(path, source, shape.config_vocab_size)
    return ModelMeta(
        name=name,
        source=source,
        path=path,
        revision=revision,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        d_model=shape.d_model,
        d_head=shape.d_head,
        d_mlp=shape.d_mlp,
        n_ctx=shape.n_ctx,
        vocab_size=vocab_size,
        activation=shape.activation,
        layer_norm_epsilon=shape.eps,
        builtin=builtin,
        family=shape.family,
        n_kv_heads=shape.n_kv_heads,
        absent_locations=shape.absent_locations,
        absent_dsts=shape.absent_dsts,
    )


def _tokenizer_vocab_size(path: Path | None, source: str, rows: int) -> int:
    """V from the model's tokenizer.json (families.md §1.4); refused when missing or too big."""
    file = None if path is None else path / "tokenizer.json"
    if file is None or not file.is_file():
        raise UnsupportedError(
            f"model {source!r} has no tokenizer.json, which its family needs", "tokenizer.json"
        )
    vocab_size = tokenizer_vocab_size(str(file))
    if vocab_size > rows:
        raise UnsupportedError(
            f"model {source!r}: its tokenizer has {vocab_size} ids but the embedding has only "
            f"{rows} rows",
            "vocab_size",
        )
    return vocab_size


def _check_gpt2(config: dict, source: str) -> None:
    if config.get("add_cross_attention"):
        raise UnsupportedError(f"model {source!r} has cross-attention, which is not supported")
    if config.get("scale_attn_by_inverse_layer_idx") or config.get("scale_attn_weights") is False:
        raise UnsupportedError(
            f"model {source!r} scales attention scores non-standardly, which is not supported"
        )
    if int(config["n_embd"]) % int(config["n_head"]):
        raise UnsupportedError(f"model {source!r}: n_embd is not a multiple of n_head")


# --- revisions --------------------------------------------------------------------------------


def weight_files(path: Path) -> list[Path]:
    """The checkpoint files of a model directory, shards in index order; [] if there are none."""
    for index_name in WEIGHT_INDEX_FILES:
        index_file = path / index_name
        if index_file.is_file():
            weight_map = json.loads(index_file.read_text(encoding="utf-8")).get("weight_map", {})
            return [path / shard for shard in sorted(set(weight_map.values()))]
    return [path / name for name in WEIGHT_FILES if (path / name).is_file()][:1]


def _weights_revision(path: Path) -> str:
    """A sha256 prefix of the weight files' content, or of config.json if there are none."""
    files = weight_files(path) or [path / "config.json"]
    digest = hashlib.sha256()
    for file in files:
        if not file.is_file():
            raise NotFoundError(f"weights file {file} is missing")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


# --- the Hugging Face cache -------------------------------------------------------------------


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache directory, by the same environment variables the hub uses."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        return Path(hf_home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _find_in_hf_cache(repo_id: str) -> tuple[Path, str]:
    """(snapshot directory, commit hash) of a cached hub model, or NotFoundError."""
    cache = hf_hub_cache_dir()
    candidates = [repo_id]
    alias = _HUB_ALIASES.get(repo_id) or {v: k for k, v in _HUB_ALIASES.items()}.get(repo_id)
    if alias:
        candidates.append(alias)
    for candidate in candidates:
        found = _cached_snapshot(cache / ("models--" + candidate.replace("/", "--")))
        if found is not None:
            return found
    raise NotFoundError(
        f"model {repo_id!r} is neither a local directory nor in the Hugging Face cache at {cache}. "
        + _HOW_TO_PROVIDE.format(id=repo_id)
    )


def _cached_snapshot(repo_dir: Path) -> tuple[Path, str] | None:
    """The snapshot ``refs/main`` points at; failing that, the newest one with a config.json."""
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        if (snapshots / commit / "config.json").is_file():
            return snapshots / commit, commit
    usable = [s for s in snapshots.iterdir() if (s / "config.json").is_file()]
    if not usable:
        return None
    newest = max(usable, key=lambda s: (s.stat().st_mtime, s.name))
    return newest, newest.name

"""actq's inference and processing engine: a library, no database, queue or web server.

    model = load_model("tiny-gpt2")            # or a HF-format directory, NAME=DIR, a cached hub id
    response = run("batched_tdb", request, model)

`run` takes a request in TDB's wire JSON (a parsed dict) and returns the response as wire JSON (a
dict with TDB's key order); a request the model cannot serve raises a `models.errors.ActqError`
that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.model_meta import ModelMeta, resolve_model
from models.tokenizer import Gpt2Tokenizer, load_tokenizer

from .autoencoders import LoadedAutoencoders, load_autoencoders
from .families import build_model_weights
from .families.base import ModelWeights
from .loading import load_config, load_raw_state_dict
from .pipeline import run_batch
from .routes import ENDPOINTS, SINGLE_ROUTES, prepare, run_many

__all__ = ["LoadedModel", "load_model", "run", "run_many", "ENDPOINTS", "SINGLE_ROUTES"]


@dataclass
class LoadedModel:
    name: str
    meta: ModelMeta
    tokenizer: Gpt2Tokenizer
    weights: ModelWeights
    device: torch.device
    excluded_ids: list[int]
    autoencoders: LoadedAutoencoders = field(default_factory=LoadedAutoencoders)


def load_model(
    name_or_dir: str,
    device: str | None = None,
    data_dir=None,
    *,
    mlp_autoencoder: str | None = None,
    attention_autoencoder: str | None = None,
) -> LoadedModel:
    """Load a model once: weights on `device` (default: CUDA if present), tokenizer, and the AEs
    to serve (each a folder in TDB's or SAELens's format, or ``NAME=DIR``). The family adapter is
    chosen by config.json's model_type (worker/engine/families/)."""
    meta = resolve_model(name_or_dir, data_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = load_tokenizer(meta)
    raw = load_raw_state_dict(meta, data_dir)
    weights = build_model_weights(
        raw, load_config(meta, data_dir), meta.vocab_size, dev, meta.source
    )
    del raw
    autoencoders = load_autoencoders(meta, dev, mlp_autoencoder, attention_autoencoder)
    return LoadedModel(
        meta.name,
        meta,
        tokenizer,
        weights,
        dev,
        list(tokenizer.excluded_token_ids()),
        autoencoders,
    )


def model_info(model: LoadedModel) -> dict:
    return {
        "modelName": model.name,
        **model.autoencoders.info().model_info(),
        "nLayers": model.meta.n_layers,
    }


def run(endpoint: str, request: dict | None, model: LoadedModel) -> dict:
    """Answer one TDB request with `model`, exactly as TDB's activation server would."""
    if endpoint == "model_info":
        return model_info(model)
    route = prepare(endpoint, request, model)
    with torch.inference_mode(False):
        return route.answer(run_batch(route.subs, model, route.paths))

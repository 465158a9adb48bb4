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

from models.checks import validate_request
from models.model_meta import ModelMeta, resolve_model
from models.tokenizer import Gpt2Tokenizer, load_tokenizer
from models.wire import protocol as p
from models.wire.protocol import tdb_camel
from models.wire.tdb import convert_tdb_request

from .autoencoders import LoadedAutoencoders, load_autoencoders
from .families import build_model_weights
from .families.base import ModelWeights
from .loading import compute_dtype, load_config, load_raw_state_dict
from .pipeline import run_batch
from .planning import Paths

__all__ = ["LoadedModel", "load_model", "run", "ENDPOINTS"]

# Single-spec routes: request field of the spec -> (internal spec name, response data field).
SINGLE_ROUTES = {
    "derived_scalars": ("derived_scalars_request_spec", "derivedScalarsResponseData"),
    "derived_attention_scalars": (
        "derived_attention_scalars_request_spec",
        "derivedAttentionScalarsResponseData",
    ),
    "multiple_top_k_derived_scalars": (
        "multiple_top_k_derived_scalars_request_spec",
        "multipleTopKDerivedScalarsResponseData",
    ),
}
ENDPOINTS = ("model_info", *SINGLE_ROUTES, "batched", "batched_tdb")


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
    dtype: str | None = None,
) -> LoadedModel:
    """Load a model once: weights on `device` (default: CUDA if present), tokenizer, and the AEs
    to serve (each a folder in TDB's or SAELens's format, or ``NAME=DIR``). The family adapter is
    chosen by config.json's model_type (worker/engine/families/). Weights are computed in
    float32 whatever the checkpoint stores, unless `dtype` (default: ACTQ_DTYPE) names
    bfloat16 or float16."""
    torch_dtype = compute_dtype(dtype)
    meta = resolve_model(name_or_dir, data_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = load_tokenizer(meta)
    raw = load_raw_state_dict(meta, data_dir)
    weights = build_model_weights(
        raw, load_config(meta, data_dir), meta.vocab_size, dev, meta.source, torch_dtype
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
    parsed = p.parse_request(endpoint, request)
    validate_request(endpoint, parsed, model.meta, model.tokenizer, model.autoencoders.info())
    with torch.inference_mode(False):
        if endpoint == "batched":
            return run_batch(list(parsed.inference_sub_requests), model)
        if endpoint == "batched_tdb":
            subs = [convert_tdb_request(spec) for spec in parsed.sub_requests]
            paths = [
                Paths(
                    f"subRequests.{i}",
                    dict.fromkeys(sub.processing_request_spec_by_name, f"subRequests.{i}"),
                )
                for i, sub in enumerate(subs)
            ]
            return run_batch(subs, model, paths)
        spec_field, data_field = SINGLE_ROUTES[endpoint]
        sub = p.InferenceSubRequest(
            inference_request_spec=parsed.inference_request_spec,
            processing_request_spec_by_name={spec_field: getattr(parsed, spec_field)},
        )
        paths = Paths("inferenceRequestSpec", {spec_field: tdb_camel(spec_field)})
        answer = run_batch([sub], model, [paths])["inferenceSubResponses"][0]
        return {
            "inferenceAndTokenData": answer["inferenceResponse"]["inferenceAndTokenData"],
            data_field: answer["processingResponseDataByName"][spec_field],
        }

"""The models this API accepts jobs for, with the metadata and tokenizer that validation needs.

Both are light (a config file and a BPE vocabulary; no torch). Each model is resolved on first
use and kept for the life of the process. The first configured model is the default.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from models.autoencoder_files import read_autoencoder_info
from models.autoencoders import NO_AUTOENCODERS, ServedAutoencoders
from models.errors import ActqError, NotFoundError
from models.model_meta import ModelMeta, resolve_model
from models.tokenizer import load_tokenizer


@dataclass
class ServedModel:
    meta: ModelMeta
    tokenizer: Any
    autoencoders: ServedAutoencoders = NO_AUTOENCODERS


class ServedModels:
    def __init__(
        self, specs: list[str], data_dir, autoencoders: dict[str, ServedAutoencoders] | None = None
    ):
        self.specs = specs
        self.data_dir = data_dir
        self.autoencoders = autoencoders or {}  # spec -> the AEs its workers serve
        self._by_name: dict[str, ServedModel] = {}
        self.errors: dict[str, str] = {}  # spec -> why it cannot be served
        self._loaded = False
        self._lock = threading.Lock()

    def _load_all(self) -> None:
        with self._lock:
            if self._loaded:
                return
            for spec in self.specs:
                try:
                    meta = resolve_model(spec, self.data_dir)
                    aes = self.autoencoders.get(spec, NO_AUTOENCODERS)
                    self._by_name[meta.name] = ServedModel(meta, load_tokenizer(meta), aes)
                except ActqError as error:
                    self.errors[spec] = error.message
            self._loaded = True

    def names(self) -> list[str]:
        self._load_all()
        return list(self._by_name)

    def get(self, name: str | None) -> ServedModel:
        """The served model called ``name`` (the default one when None)."""
        self._load_all()
        if name is None:
            if not self._by_name:
                problems = "; ".join(f"{k}: {v}" for k, v in self.errors.items())
                raise NotFoundError(f"no model can be served: {problems}", path="model")
            return next(iter(self._by_name.values()))
        served = self._by_name.get(name)
        if served is None:
            unavailable = f" ({name}: {self.errors[name]})" if name in self.errors else ""
            raise NotFoundError(
                f"model {name!r} is not served here; served: {', '.join(self._by_name)}"
                f"{unavailable}. To serve it, start the service with ACTQ_MODELS listing it "
                f"(e.g. ACTQ_MODELS={','.join([*self._by_name, name])}) and run a worker for "
                f"it (ACTQ_MODEL={name} actq worker); `actq up --model {name}` serves one model",
                path="model",
            )
        return served

    def all(self) -> list[ServedModel]:
        self._load_all()
        return list(self._by_name.values())


def served_autoencoders(settings) -> ServedAutoencoders:
    """The AEs the workers of ``settings.model`` load (ACTQ_MLP_AUTOENCODER, ...), read without
    torch; a folder that cannot be read fails the API's start, as it fails the worker's."""
    slots = {
        slot: None if not argument else read_autoencoder_info(argument)
        for slot, argument in (
            ("mlp", settings.mlp_autoencoder),
            ("attention", settings.attention_autoencoder),
        )
    }
    return ServedAutoencoders(**slots)


def init_app(app: Flask) -> None:
    settings = app.config["ACTQ_SETTINGS"]
    aes = {settings.model: served_autoencoders(settings)}
    app.extensions["actq.models"] = ServedModels(
        settings.served_models(), settings.data_path(), aes
    )


def served_models() -> ServedModels:
    return current_app.extensions["actq.models"]


def family_of(model_name: str) -> str | None:
    """The family (config.json's model_type) of a served model, or None when it is not served
    here (a run stored by another server) or outside a request."""
    try:
        served = served_models()
        served._load_all()
        entry = served._by_name.get(model_name)
    except RuntimeError:  # no application context
        return None
    return None if entry is None else entry.meta.family

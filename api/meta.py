"""Service routes: the served models, liveness, and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify
from sqlalchemy import text

from api.database import get_session
from api.openapi import openapi_document
from api.schemas import AutoencoderView, Health, ModelList, ModelView, admin_only
from api.served import served_models
from models.store.lifecycle import queue_name

bp = Blueprint("meta", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.get("/v1/models")
def models():
    served = served_models()
    views = [
        ModelView(
            name=m.meta.name,
            revision=m.meta.revision,
            source=admin_only(m.meta.source),
            queue=queue_name(m.meta.name),
            default=i == 0,
            n_layers=m.meta.n_layers,
            n_heads=m.meta.n_heads,
            d_model=m.meta.d_model,
            d_mlp=m.meta.d_mlp,
            n_ctx=m.meta.n_ctx,
            vocab_size=m.meta.vocab_size,
            autoencoders=[
                AutoencoderView(
                    name=ae.name,
                    slot=ae.kind,
                    input=ae.input_dst,
                    layers=list(ae.layers),
                    n_latents=ae.n_latents,
                    file_format=ae.file_format,
                    content_hash=ae.content_hash,
                )
                for ae in m.autoencoders.all()
            ],
            family=m.meta.family,
            n_kv_heads=m.meta.n_kv_heads or m.meta.n_heads,
        )
        for i, m in enumerate(served.all())
    ]
    unavailable = admin_only(served.errors) or {}  # the specs can be paths
    return jsonify(ModelList(models=views, unavailable=unavailable).body())


@bp.get("/healthz")
def healthz():
    try:
        get_session().execute(text("SELECT 1"))
    except Exception as error:  # the database is down: not alive for our purposes
        body = Health(status="unavailable", database=type(error).__name__).body()
        return jsonify(body), 503
    return jsonify(Health(status="ok", database="ok").body())


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())

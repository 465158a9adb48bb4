"""Records jobs (``POST /v1/records``) and node explanations (``PUT /v1/nodes/...``).

A records job runs the served model over a corpus and keeps each node's top-activating sequences
(``worker.records``). The corpus is uploaded in the body (``actq records build FILE`` reads a
local file and sends it), at most ``ACTQ_MAX_CORPUS_BYTES``; its documents are its non-empty
lines, or the ``text`` of each line of a JSON Lines file. The set is committed ``queued``, then its
message goes to the model's queue, through the outbox and under the reaper as a job's does
(``models.store.record_recovery``); ``GET /v1/records/ID`` shows its progress. AE latents are a
node kind when the model is served with that AE.
"""

from __future__ import annotations

import hashlib
import logging
import zlib

from flask import Blueprint, Flask, current_app, jsonify, request
from pydantic import Field

from api.auth import current_owner
from api.database import get_session
from api.queue import publish_row
from api.served import served_models
from models.errors import NotFoundError, RequestValidationError
from models.store.node_records import (
    KIND_DSTS,
    LATENT_KINDS,
    LATENT_SLOTS,
    RECORDS_TASK,
    create_record_set,
    dataset_name,
    put_explanation,
)
from models.store.tables import RecordSet
from models.wire.base import Float, Int, Str, WireModel
from models.wire.enums import DerivedScalarType
from models.wire.protocol import parse_as

log = logging.getLogger(__name__)
bp = Blueprint("records", __name__)


class RecordsRequest(WireModel):
    corpus: Str
    corpus_name: Str = Field(default="corpus", max_length=200)
    name: Str | None = Field(default=None, max_length=100)
    kinds: list[Str] = Field(default_factory=lambda: list(KIND_DSTS), min_length=1)
    top_k: Int = Field(default=20, ge=1, le=100)
    random_k: Int = Field(default=10, ge=0, le=100)
    seq_len: Int = Field(default=64, ge=2)


class ExplanationBody(WireModel):
    explanation: Str = Field(min_length=1, max_length=10000)
    score: Float | None = None


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _check(asked: RecordsRequest, served) -> None:
    meta = served.meta
    limit = current_app.config["ACTQ_SETTINGS"].max_corpus_bytes
    if len(asked.corpus.encode()) > limit:
        raise RequestValidationError(
            f"the corpus is larger than {limit} bytes (ACTQ_MAX_CORPUS_BYTES)", path="corpus"
        )
    for i, kind in enumerate(asked.kinds):
        if kind in LATENT_KINDS:
            slot = LATENT_SLOTS[kind]
            if served.autoencoders.get(slot) is None:
                raise RequestValidationError(
                    f"records of {kind} need a served {slot} autoencoder; {meta.name} is served "
                    f"without one (actq up --{slot}-autoencoder DIR)",
                    path=f"kinds.{i}",
                )
        elif kind not in KIND_DSTS:
            raise RequestValidationError(
                f"unknown node kind {kind!r}; expected one of {list(KIND_DSTS) + list(LATENT_KINDS)}",
                path=f"kinds.{i}",
            )
    if asked.seq_len > meta.n_ctx:
        raise RequestValidationError(
            f"seqLen {asked.seq_len} is longer than the model's context ({meta.n_ctx})",
            path="seqLen",
        )
    if "_" in (asked.name or ""):
        raise RequestValidationError("a record set's name may not contain '_'", path="name")


@bp.post("/v1/records")
def submit_records():
    asked = parse_as(RecordsRequest, request.get_data())
    served = served_models().get(request.args.get("model"))
    _check(asked, served)
    kinds = list(dict.fromkeys(asked.kinds))
    aes = {
        LATENT_SLOTS[k]: served.autoencoders.get(LATENT_SLOTS[k]).name
        for k in kinds
        if k in LATENT_SLOTS
    }
    session = get_session()
    record_set = create_record_set(
        session,
        name=asked.name or dataset_name(served.meta.name),
        model=served.meta.name,
        model_revision=served.meta.revision,
        kinds=kinds,
        autoencoders=aes or None,
        top_k=asked.top_k,
        random_k=asked.random_k,
        seq_len=asked.seq_len,
        corpus_name=asked.corpus_name,
        corpus_sha256=hashlib.sha256(asked.corpus.encode()).hexdigest(),
        corpus=zlib.compress(asked.corpus.encode(), 6),
        owner=current_owner(),
    )
    session.commit()
    publish_row(session, RecordSet, record_set.id, RECORDS_TASK, served.meta.name, "Record set")
    response = jsonify(_view(record_set))
    response.status_code = 202
    response.headers["Location"] = f"/v1/records/{record_set.id}"
    return response


@bp.get("/v1/records/<set_id>")
def record_set_status(set_id: str):
    record_set = get_session().get(RecordSet, set_id)
    if record_set is None:
        raise NotFoundError(f"no record set {set_id!r}")
    return jsonify(_view(record_set))


@bp.get("/v1/records")
def record_sets():
    rows = get_session().query(RecordSet).order_by(RecordSet.created_at.desc()).limit(100)
    return jsonify({"recordSets": [_view(r) for r in rows]})


def _view(r: RecordSet) -> dict:
    return {
        "id": r.id,
        "name": r.name,
        "dataset": dataset_name(r.model),
        "model": r.model,
        "status": r.status,
        "kinds": r.kinds,
        "autoencoders": r.autoencoders,
        "topK": r.top_k,
        "randomK": r.random_k,
        "seqLen": r.seq_len,
        "corpusName": r.corpus_name,
        "corpusSha256": r.corpus_sha256,
        "progress": {"sequences": r.done_sequences, "of": r.n_sequences},
        "attempts": r.attempts,
        "error": r.error,
        "createdAt": r.created_at.isoformat() if r.created_at else None,
        "finishedAt": r.finished_at.isoformat() if r.finished_at else None,
        "url": f"/v1/records/{r.id}",
    }


@bp.put("/v1/nodes/<dst>/<int:layer>/<int:index>/explanation")
def put_node_explanation(dst: str, layer: int, index: int):
    try:
        dst = DerivedScalarType(dst).value
    except ValueError:
        raise NotFoundError(f"unknown derived scalar type {dst!r}", path="dst") from None
    body = parse_as(ExplanationBody, request.get_data())
    served = served_models().get(request.args.get("model"))
    session = get_session()
    row = put_explanation(
        session,
        model=served.meta.name,
        dst=dst,
        layer=layer,
        index=index,
        explanation=body.explanation,
        score=body.score,
        author=current_owner(),
    )
    session.commit()
    return jsonify(
        {
            "model": row.model,
            "dst": row.dst,
            "layerIndex": row.layer_index,
            "activationIndex": row.activation_index,
            "explanation": row.explanation,
            "score": row.score,
            "author": row.author,
        }
    )

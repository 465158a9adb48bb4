"""TDB's read and explainer routes, answered from actq's records and explanations.

``/neuron_datasets_metadata`` lists each finished record set as TDB datasets (one per node kind:
short name, derived scalar type, a name for people, a path); ``/neuron_record`` and
``/attention_head_record`` answer a node's record (``models.store.node_records``) in TDB's shape;
``/existing_explanations`` answers the explanations people attached (``PUT /v1/nodes/...``).
``/explain`` and ``/score`` need a language model, which actq does not run: they answer the
explanations (and scores) people attached to the node, and otherwise a TDB-shaped 501 that says
so (the UI's node table then shows "Error" in the row's explanation line). Errors have TDB's ``{"message": ...}`` and CORS like every TDB route (``api.tdb_cors``).
"""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify, request

from api.database import get_session
from api.served import served_models
from api.tdb import tdb_error
from models.errors import ActqError, RequestError
from models.store.node_records import (
    DST_LABELS,
    KIND_DSTS,
    LATENT_KINDS,
    LATENT_SLOTS,
    dataset_name,
    dataset_path,
    explanations_of,
    finished_sets,
    models_of,
)
from models.store.record_lookup import record_for, record_text
from models.wire.protocol import parse_as
from models.wire.records import (
    ExistingExplanationsRequest,
    NodeIdAndDatasets,
    ScoreRequest,
    attention_token_scalars,
    pairs_by_token,
    token_scalars,
)

bp = Blueprint("tdb_read", __name__)

NO_EXPLAINER = (
    "actq runs no explainer model: /explain and /score need a language model (TDB calls OpenAI's "
    "API). Attach explanations with PUT /v1/nodes/DST/LAYER/INDEX/explanation; "
    "/existing_explanations serves them."
)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.errorhandler(ActqError)
def as_tdb_error(error: ActqError):
    return tdb_error(error)


def _body() -> bytes:
    return request.get_data() or b"{}"


@bp.post("/neuron_datasets_metadata")
def neuron_datasets_metadata():
    seen, listed = set(), []
    for record_set in finished_sets(get_session()):
        for kind, kind_dst in _dsts(record_set):
            short = dataset_name(record_set.model)
            if kind in LATENT_SLOTS:  # the UI's dataset for a latent's page: MODEL_AE
                short += "_" + (record_set.autoencoders or {}).get(LATENT_SLOTS[kind], "")
            key = (short, kind_dst)
            if key in seen:
                continue  # the newest set of a model answers for it (as TDB's registry)
            seen.add(key)
            listed.append(
                {
                    "shortName": key[0],
                    "derivedScalarType": kind_dst,
                    "userVisibleName": f"{record_set.model} - {DST_LABELS.get(kind_dst, kind_dst)}"
                    f" ({record_set.name}, {record_set.n_sequences} sequences)",
                    "neuronDatasetPath": dataset_path(record_set),
                }
            )
    return jsonify(listed)


def _dsts(record_set) -> list[tuple[str, str]]:
    return [(kind, {**KIND_DSTS, **LATENT_KINDS}[kind]) for kind in record_set.kinds]


def _tokenizer(record_set):
    served = served_models()
    for model in served.all():
        if model.meta.name == record_set.model:
            return model.tokenizer
    return served.get(None).tokenizer  # same vocabulary family; the record's model is not served


@bp.post("/neuron_record")
def neuron_record():
    node = parse_as(NodeIdAndDatasets, _body())
    record_set, record = record_for(get_session(), node)
    top, random = record_text(_tokenizer(record_set), record)
    groups = [[list(zip(t, a, strict=True)) for t, a in part] for part in (top, random)]
    top_rows, random_rows = token_scalars(groups)
    return jsonify(
        {
            "dataset": dataset_path(record_set),
            "maxActivation": record.max_activation,
            "topActivations": top_rows,
            "randomSample": random_rows,
        }
    )


@bp.post("/attention_head_record")
def attention_head_record():
    node = parse_as(NodeIdAndDatasets, _body())
    record_set, record = record_for(get_session(), node)
    top, random = record_text(_tokenizer(record_set), record)
    groups = [[pairs_by_token(t, a) for t, a in part] for part in (top, random)]
    top_rows, random_rows = attention_token_scalars(groups)
    return jsonify(
        {
            "dataset": dataset_path(record_set),
            "maxAttentionActivation": record.max_activation,
            "mostPositiveTokenSequences": top_rows,
            "randomTokenSequences": random_rows,
        }
    )


def _models(datasets: list[str]) -> set[str]:
    """The models the UI's dataset names may mean (record sets' models, served models' names)."""
    session, models = get_session(), set()
    for dataset in datasets:
        models |= models_of(session, dataset)
        models |= {
            m.meta.name
            for m in served_models().all()
            if dataset.split("_")[0] in (m.meta.name, dataset_name(m.meta.name))
        }
    return models


def _attached(datasets: list[str], node) -> list:
    dst = getattr(node.dst, "value", node.dst)
    return explanations_of(
        get_session(), _models(datasets), dst, node.layer_index, node.activation_index
    )


@bp.post("/existing_explanations")
def existing_explanations():
    asked = parse_as(ExistingExplanationsRequest, _body())
    if bool(asked.explanation_datasets) == (asked.neuron_dataset is not None):
        raise RequestError(
            "Exactly one of explanation_datasets and neuron_dataset must be specified.",
            path="explanationDatasets",
        )
    rows = _attached(asked.explanation_datasets or [asked.neuron_dataset], asked)
    return jsonify(
        [
            {
                "explanation": row.explanation,
                "score": row.score,
                "datasetName": dataset_name(row.model),
            }
            for row in rows
        ]
    )


@bp.post("/explain")
def explain():
    """The explanations people attached to the node, as if explained; else the 501."""
    node = parse_as(NodeIdAndDatasets, _body())
    rows = _attached(list(node.datasets), node)
    if not rows:
        return _no_explainer()
    return jsonify(
        {"explanations": [r.explanation for r in rows], "dataset": dataset_name(rows[0].model)}
    )


@bp.post("/score")
def score():
    """The score attached with that explanation (``null`` if none was given: the UI shows "?")."""
    asked = parse_as(ScoreRequest, _body())
    rows = [r for r in _attached(list(asked.datasets), asked) if r.explanation == asked.explanation]
    if not rows:
        return _no_explainer()
    return jsonify({"score": rows[0].score, "datasetPath": dataset_name(rows[0].model)})


def _no_explainer():
    response = jsonify(
        {
            "message": NO_EXPLAINER,
            "error": {"type": "not_implemented", "message": NO_EXPLAINER, "path": None},
        }
    )
    response.status_code = 501
    return response

"""``normalizeActivationsUsingNeuronRecord``: a prompt's values scaled by a stored node record.

TDB's node pages send it in every ``derived_scalars`` and ``derived_attention_scalars`` request:
a neuron's ``normalizedActivations`` are its activations floored at 0 and divided by the record's
largest activation; a head's normalised token-pair scalars are computed over the prompt together
with the record's top sequences, so that the record's largest values set the scale (TDB's rule).
The engine computes the values; this step, in the worker (which reads the store), adds the
normalisation before the response is stored, so every route that returns the job returns it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from models.store.record_lookup import (
    NORMALIZED_ROUTES,
    normalization_node,
    record_for,
    record_text,
)
from models.wire.records import attention_token_scalars, normalized_activations, pairs_by_token


def normalizing(sessions: sessionmaker[Session], runner):
    """``runner`` (default: the engine) followed by the normalisation the request asks for."""

    def run(endpoint: str, request: Any, model: Any) -> dict:
        if runner is None:
            from worker.engine import run as engine_run

            response = engine_run(endpoint, request, model)
        else:
            response = runner(endpoint, request, model)
        return with_record_normalization(
            sessions, endpoint, request, response, getattr(model, "tokenizer", None)
        )

    return run


def with_record_normalization(
    sessions: sessionmaker[Session], endpoint: str, request: Any, outcome: Any, tokenizer
) -> Any:
    """The response with the normalisation the request asks for (a 404 if there is no such
    record)."""
    if not isinstance(outcome, dict) or "inferenceAndTokenData" not in outcome:
        return outcome
    asked = normalization_node(endpoint, request)
    if asked is None:
        return outcome
    with sessions() as session:
        _, record = record_for(session, *asked)
        top, _random = record_text(tokenizer, record)
    fields = NORMALIZED_ROUTES[endpoint]
    data = outcome[fields[1]]
    if endpoint == "derived_scalars":
        data["normalizedActivations"] = normalized_activations(
            data["activations"], record.max_activation
        )
        return outcome
    prompt = [(row["token"], row["scalars"]) for row in data["tokenAndAttentionScalarsList"]]
    record_sequences = [pairs_by_token(tokens, acts) for tokens, acts in top]
    rows = attention_token_scalars([[prompt], record_sequences])[0][0]
    data["tokenAndAttentionScalarsList"] = rows
    return outcome

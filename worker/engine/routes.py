"""Each TDB route as one group of sub-requests, and its answer back in the route's own shape.

`prepare` parses and validates a request and turns it into the batch of sub-requests the
pipeline runs (a single-spec route is a batch of one); `Route.answer` turns that batch's response
into the route's. `run_many` answers several requests (several jobs) with shared passes
(`worker.engine.groups`), each exactly as `worker.engine.run` answers it alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.checks import validate_request
from models.errors import ActqError
from models.wire import protocol as p
from models.wire.protocol import tdb_camel
from models.wire.tdb import convert_tdb_request

from .groups import settle_groups
from .planning import Paths

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
class Route:
    """A request as the group of sub-requests it runs, and how its answer is shaped."""

    subs: list[p.InferenceSubRequest]
    paths: list[Paths] | None
    answer: Callable[[dict], dict]


def _as_is(batched: dict) -> dict:
    return batched


def prepare(endpoint: str, request, model) -> Route:
    """Parse and validate ``request`` for ``endpoint`` (not model_info); raises ActqError."""
    parsed = p.parse_request(endpoint, request)
    validate_request(endpoint, parsed, model.meta, model.tokenizer, model.autoencoders.info())
    if endpoint == "batched":
        return Route(list(parsed.inference_sub_requests), None, _as_is)
    if endpoint == "batched_tdb":
        subs = [convert_tdb_request(spec) for spec in parsed.sub_requests]
        paths = [
            Paths(
                f"subRequests.{i}",
                dict.fromkeys(sub.processing_request_spec_by_name, f"subRequests.{i}"),
            )
            for i, sub in enumerate(subs)
        ]
        return Route(subs, paths, _as_is)
    spec_field, data_field = SINGLE_ROUTES[endpoint]
    sub = p.InferenceSubRequest(
        inference_request_spec=parsed.inference_request_spec,
        processing_request_spec_by_name={spec_field: getattr(parsed, spec_field)},
    )
    paths = Paths("inferenceRequestSpec", {spec_field: tdb_camel(spec_field)})

    def answer(batched: dict) -> dict:
        (sub_answer,) = batched["inferenceSubResponses"]
        return {
            "inferenceAndTokenData": sub_answer["inferenceResponse"]["inferenceAndTokenData"],
            data_field: sub_answer["processingResponseDataByName"][spec_field],
        }

    return Route([sub], [paths], answer)


def run_many(
    requests: list[tuple[str, object]],
    model,
    on_answer: Callable[[int, dict | ActqError], None] | None = None,
    max_rows_per_pass: int | None = None,
) -> list[dict | ActqError]:
    """Answer each ``(endpoint, request)`` as `worker.engine.run` would alone, with shared
    passes; a refused request gets its error in its place. ``on_answer(i, outcome)`` is called
    as soon as request i is answered (model_info and refusals first, then pack by pack)."""
    from . import model_info

    outcomes: list = [None] * len(requests)

    def settle(i: int, outcome) -> None:
        outcomes[i] = outcome
        if on_answer is not None:
            on_answer(i, outcome)

    routes: dict[int, Route] = {}
    for i, (endpoint, request) in enumerate(requests):
        try:
            if endpoint == "model_info":
                settle(i, model_info(model))
            else:
                routes[i] = prepare(endpoint, request, model)
        except ActqError as error:
            settle(i, error)
    order = list(routes)

    def answered(j: int, outcome) -> None:
        i = order[j]
        settle(i, outcome if isinstance(outcome, ActqError) else routes[i].answer(outcome))

    groups = [routes[i].subs for i in order]
    paths = [routes[i].paths or _batched_paths(routes[i].subs) for i in order]
    with torch.inference_mode(False):
        settle_groups(groups, model, paths, max_rows_per_pass, on_answer=answered)
    return outcomes


def _batched_paths(subs: list[p.InferenceSubRequest]) -> list[Paths]:
    return [Paths.batched(i, sub.processing_request_spec_by_name) for i, sub in enumerate(subs)]

"""The runs of a request: one per sub-request, described in the terms people compare them by.

``describe_runs(endpoint, request)`` reads a request in wire form (camelCase JSON, as parsed) and
returns, for each sub-request in order, its prompt, target and distractor tokens, a canonical form
of its ablations (sorted, compact JSON, so two runs with the same ablations in any order compare
equal as text) and its trace settings. ``run_losses`` reads the loss of each run back out of the
response. Pure functions of JSON: no database, no model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    prompt: str
    target_tokens: list[str] | None
    distractor_tokens: list[str] | None
    ablations: str  # canonical JSON list
    has_ablations: bool
    trace: dict[str, Any] | None

    @property
    def prompt_hash(self) -> str:
        return prompt_hash(self.prompt)


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_ablations(ablations: list[dict[str, Any]] | None) -> str:
    """Ablations as a sorted JSON list; ``value`` is a float so ``0`` and ``0.0`` match."""
    items = []
    for ablation in ablations or []:
        item = dict(ablation)
        if isinstance(item.get("value"), int | float):
            item["value"] = float(item["value"])
        items.append(canonical_json(item))
    return "[" + ",".join(sorted(items)) + "]"


def _tdb_run(spec: dict[str, Any]) -> RunInfo:
    trace = {
        key: spec.get(key)
        for key in ("upstreamNodeToTrace", "downstreamNodeToTrace")
        if spec.get(key) is not None
    }
    ablations = spec.get("nodeAblations")
    return RunInfo(
        prompt=spec.get("prompt", ""),
        target_tokens=spec.get("targetTokens"),
        distractor_tokens=spec.get("distractorTokens"),
        ablations=canonical_ablations(ablations),
        has_ablations=bool(ablations),
        trace=trace or None,
    )


def _inference_run(spec: dict[str, Any]) -> RunInfo:
    loss = spec.get("lossFnConfig") or {}
    ablations = spec.get("ablationSpecs")
    trace = spec.get("traceConfig")
    return RunInfo(
        prompt=spec.get("prompt", ""),
        target_tokens=loss.get("targetTokens"),
        distractor_tokens=loss.get("distractorTokens"),
        ablations=canonical_ablations(ablations),
        has_ablations=bool(ablations),
        trace={"traceConfig": trace} if trace is not None else None,
    )


def describe_runs(endpoint: str, request: dict[str, Any] | None) -> list[RunInfo]:
    """One RunInfo per sub-request of ``request`` (none for ``model_info``)."""
    if not request:
        return []
    if endpoint == "batched_tdb":
        return [_tdb_run(spec) for spec in request.get("subRequests") or []]
    if endpoint == "batched":
        return [
            _inference_run(sub.get("inferenceRequestSpec") or {})
            for sub in request.get("inferenceSubRequests") or []
        ]
    if "inferenceRequestSpec" in request:
        return [_inference_run(request["inferenceRequestSpec"] or {})]
    return []


def run_losses(endpoint: str, response: dict[str, Any]) -> list[float | None]:
    """The ``loss`` of each run, in run order, read from a response in wire form."""
    if endpoint in ("batched", "batched_tdb"):
        subs = response.get("inferenceSubResponses") or []
        return [
            ((sub.get("inferenceResponse") or {}).get("inferenceAndTokenData") or {}).get("loss")
            for sub in subs
        ]
    data = response.get("inferenceAndTokenData")
    return [data.get("loss")] if isinstance(data, dict) else []

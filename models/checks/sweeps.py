"""A sweep's grid as points, each point's request, and the sweep's cost bound.

``base_of`` turns the body's ``base`` (a TDB request spec, or a ``batched_tdb`` body with one
sub-request) or ``batched`` (an inference sub-request, or a ``batched`` body with one) into the
endpoint and request its runs are; ``grid_points`` lists the grid's points, refusing an index out
of the model's range with a 422 naming the grid field; ``point_request`` is the base with one
more ablation, the request each point's run stores (a normal job request, so the same request
sent alone is the same run). ``check_sweep_cost``: the sweep's responses together are bounded by
``ACTQ_MAX_SWEEP_RESPONSE_BYTES`` and its number of points by ``ACTQ_MAX_SWEEP_POINTS``; each
point on its own by the per-job limits (its passes are sized by the worker to a memory budget).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from models.checks.cost import Cost, check_cost
from models.errors import ActqError, RequestValidationError
from models.wire.sweeps import SweepGrid, SweepRequest

# the hook point a node ablation of each kind overwrites (engine.md §5.5), for ``batched`` bases
ABLATED_LOCATION = {
    "attention_head": "attn.qk_probs",
    "mlp_neuron": "mlp.post_act",
    "autoencoder_latent": "online_autoencoder_latent",
    "mlp_autoencoder_latent": "online_mlp_autoencoder_latent",
    "attention_autoencoder_latent": "online_attention_autoencoder_latent",
}


@dataclass(frozen=True)
class Base:
    endpoint: str  # batched_tdb or batched
    request: dict[str, Any]  # the clean request, with its one sub-request
    path: str  # where the sub-request is in the sweep's body

    @property
    def sub(self) -> dict[str, Any]:
        key = "subRequests" if self.endpoint == "batched_tdb" else "inferenceSubRequests"
        return self.request[key][0]

    @property
    def prompt(self) -> str:
        sub = self.sub
        return (
            sub["prompt"]
            if self.endpoint == "batched_tdb"
            else sub["inferenceRequestSpec"]["prompt"]
        )


@dataclass(frozen=True)
class Point:
    node_type: str
    layer: int
    index: int  # the head, neuron or latent
    position: int  # the token
    value: float | None  # None: the clean run's mean over tokens, filled in by the worker

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodeType": self.node_type,
            "layer": self.layer,
            "index": self.index,
            "position": self.position,
            "value": self.value,
        }


def base_of(asked: SweepRequest) -> Base:
    if (asked.base is None) == (asked.batched is None):
        raise RequestValidationError("give exactly one of base and batched", path="base")
    if asked.base is not None:
        return _one(asked.base, "base", "subRequests", "batched_tdb")
    return _one(asked.batched, "batched", "inferenceSubRequests", "batched")


def _one(body: dict[str, Any], name: str, key: str, endpoint: str) -> Base:
    if key not in body:
        return Base(endpoint, {key: [body]}, name)
    subs = body[key]
    if not isinstance(subs, list) or len(subs) != 1:
        raise RequestValidationError(
            "a sweep's base has exactly one sub-request (the grid makes the others)",
            path=f"{name}.{key}",
        )
    return Base(endpoint, {key: subs}, f"{name}.{key}.0")


def in_base(error: ActqError, base: Base) -> ActqError:
    """The error with its path in the sweep's body (``base.prompt``, not ``subRequests.0.prompt``)."""
    key = "subRequests.0" if base.endpoint == "batched_tdb" else "inferenceSubRequests.0"
    path = error.path or ""
    if path == key or path.startswith(key + "."):
        error.path = base.path + path[len(key) :]
    elif path in ("", "subRequests", "inferenceSubRequests"):
        error.path = base.path
    return error


def grid_points(grid: SweepGrid, meta: Any, n_tokens: int, max_points: int) -> list[Point]:
    nodes = _nodes(grid, meta)
    positions = _positions(grid, n_tokens)
    values: list[float | None]
    if grid.values == "mean":  # the clean run's mean over tokens, computed by the worker
        values = [None]
    elif isinstance(grid.values, list):
        if not grid.values:
            raise RequestValidationError("give at least one value", path="grid.values")
        values = [float(v) for v in grid.values]
    else:
        values = [float(grid.values)]
    count = len(nodes) * len(positions) * len(values)
    if count > max_points:
        raise RequestValidationError(
            f"the grid has {count} points; the limit is {max_points} (ACTQ_MAX_SWEEP_POINTS)",
            path="grid",
        )
    return [Point(*node, t, v) for node in nodes for t in positions for v in values]


def _nodes(grid: SweepGrid, meta: Any) -> list[tuple[str, int, int]]:
    given = [k for k in ("heads", "neurons", "latents") if getattr(grid, k) is not None]
    if len(given) != 1:
        raise RequestValidationError("give exactly one of heads, neurons and latents", path="grid")
    if grid.heads is not None:
        layers = range(meta.n_layers) if grid.heads == "all" else grid.heads
        if not layers:
            raise RequestValidationError("give at least one layer", path="grid.heads")
        for i, layer in enumerate(layers):
            _layer(layer, meta, f"grid.heads.{i}")
        return [
            ("attention_head", L, h) for L in dict.fromkeys(layers) for h in range(meta.n_heads)
        ]
    if grid.neurons is not None:
        for i, n in enumerate(grid.neurons):
            _layer(n.layer, meta, f"grid.neurons.{i}.layer")
            if n.index >= meta.d_mlp:
                raise RequestValidationError(
                    f"neuron {n.index} is out of range: the model has {meta.d_mlp} MLP neurons",
                    path=f"grid.neurons.{i}.index",
                )
        return list(dict.fromkeys(("mlp_neuron", n.layer, n.index) for n in grid.neurons))
    for i, latent in enumerate(grid.latents):
        _layer(latent.layer, meta, f"grid.latents.{i}.layer")
    return list(dict.fromkeys((x.node_type, x.layer, x.index) for x in grid.latents))


def _layer(layer: int, meta: Any, path: str) -> None:
    if not 0 <= layer < meta.n_layers:
        raise RequestValidationError(
            f"layer {layer} is out of range: the model has {meta.n_layers} layers", path=path
        )


def _positions(grid: SweepGrid, n_tokens: int) -> list[int]:
    raw = grid.positions
    if raw == "all":
        return list(range(n_tokens))
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise RequestValidationError("give at least one position", path="grid.positions")
    out = []
    for i, t in enumerate(items):
        t = n_tokens - 1 if t == "last" else t
        if not 0 <= t < n_tokens:
            where = f"grid.positions.{i}" if isinstance(raw, list) else "grid.positions"
            raise RequestValidationError(
                f"token {t} is out of range: the prompt has {n_tokens} tokens", path=where
            )
        out.append(t)
    return list(dict.fromkeys(out))


def point_request(base: Base, point: Point, value: float) -> dict[str, Any]:
    """The base request with the point's ablation after the base's own ones."""
    request = copy.deepcopy(base.request)
    sub = request["subRequests" if base.endpoint == "batched_tdb" else "inferenceSubRequests"][0]
    if base.endpoint == "batched_tdb":
        node = {
            "nodeType": point.node_type,
            "tensorIndices": [point.position, 0, point.index]
            if point.node_type == "attention_head"
            else [point.position, point.index],
            "layerIndex": point.layer,
            "passType": "forward",
        }
        sub["nodeAblations"] = [
            *(sub.get("nodeAblations") or []),
            {"nodeIndex": node, "value": value},
        ]
    else:
        spec = sub["inferenceRequestSpec"]
        indices = (
            [point.position, "All", point.index]
            if point.node_type == "attention_head"
            else [point.position, point.index]
        )
        ablation = {
            "index": {
                "activationLocationType": ABLATED_LOCATION[point.node_type],
                "tensorIndices": indices,
                "layerIndex": point.layer,
                "passType": "forward",
            },
            "value": value,
        }
        spec["ablationSpecs"] = [*(spec.get("ablationSpecs") or []), ablation]
    return request


def points_that_fit(point: Cost, limit: int) -> int:
    return limit // max(1, point.response_bytes)


def check_sweep_cost(point: Cost, n_points: int, settings: Any) -> None:
    """Each point under the per-job limits; all of them (and the baseline) under the sweep's."""
    check_cost(point, settings.max_response_bytes, settings.max_job_memory_bytes)
    total = point.response_bytes * (n_points + 1)
    limit = settings.max_sweep_response_bytes
    if total > limit:
        fit = max(0, points_that_fit(point, limit) - 1)
        raise RequestValidationError(
            f"the sweep's {n_points} points (and its baseline) are estimated at "
            f"{total / 2**20:,.1f} MiB of responses ({point.response_bytes / 2**10:,.1f} KiB "
            f"each); the limit is {limit / 2**20:,.1f} MiB (ACTQ_MAX_SWEEP_RESPONSE_BYTES): "
            f"{fit} points fit",
            path="grid",
        )

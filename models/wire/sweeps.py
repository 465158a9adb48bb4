"""The body of ``POST /v1/sweeps``: a base request and the grid of ablations to run it under.

    {"base": TdbRequestSpec | {"subRequests": [TdbRequestSpec]},   (or "batched": a sub-request)
     "grid": {"heads": "all" | [layer, ...]            every head of these layers, or
              "neurons": [{"layer": L, "index": I}, ...], or
              "latents": [{"nodeType": "mlp_autoencoder_latent", "layer": L, "index": I}, ...],
              "positions": "last" | "all" | T | [T | "last", ...],
              "values": 0 | [v, ...] | "mean"},
     "node": MirroredNodeIndex (optional: the node whose change the table shows),
     "group": "act_times_grad" (the node table's group that value is read from),
     "label": ..., "tags": [...]}

The grid's points are nodes x positions x values, each one ablation added to the base. The base
is kept as raw JSON here: it is parsed and checked as the request it becomes (``batched_tdb`` or
``batched``), by the same code that checks a job, so its errors are the ones a job would get.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from models.wire.base import FiniteFloat, Int, Str, WireModel
from models.wire.inference import MirroredNodeIndex

LatentType = Literal["autoencoder_latent", "mlp_autoencoder_latent", "attention_autoencoder_latent"]
Position = Int | Literal["last"]
MAX_GRID_ITEMS = 10_000


class NeuronNode(WireModel):
    layer: Int = Field(ge=0)
    index: Int = Field(ge=0)


class LatentNode(WireModel):
    node_type: LatentType = "autoencoder_latent"
    layer: Int = Field(ge=0)
    index: Int = Field(ge=0)


class SweepGrid(WireModel):
    heads: Literal["all"] | list[Int] | None = Field(default=None, max_length=1000)
    neurons: list[NeuronNode] | None = Field(default=None, min_length=1, max_length=MAX_GRID_ITEMS)
    latents: list[LatentNode] | None = Field(default=None, min_length=1, max_length=MAX_GRID_ITEMS)
    positions: Position | Literal["all"] | list[Position] = "last"
    values: FiniteFloat | Literal["mean"] | list[FiniteFloat] = 0.0


class SweepRequest(WireModel):
    base: dict[str, Any] | None = None
    batched: dict[str, Any] | None = None
    grid: SweepGrid
    node: MirroredNodeIndex | None = None
    group: Str = Field(default="act_times_grad", max_length=100)
    label: Str | None = Field(default=None, max_length=200)
    tags: list[Str] = Field(default_factory=list)

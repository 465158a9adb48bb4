"""The batched request pipeline (protocol.md §5): plan, one pass, rank, respond.

Single-spec routes are the one-element case of a batch. For each sub-request the specs are
planned in key order (which DSTs, which configuration), the whole batch runs through one forward
and at most one backward pass, top-k node lists are unioned per spec name across the batch, and
each sub-request answers every spec from its own values over the shared node list. A batch is the
one-group case of `worker.engine.groups.run_groups`, so a batch alone and the same batch sharing
a pass with others run the same code.
"""

from __future__ import annotations

from models.wire import protocol as p

from .groups import run_groups
from .planning import Paths


def run_batch(subs: list[p.InferenceSubRequest], model, paths: list[Paths] | None = None) -> dict:
    """Answer a batch of inference sub-requests as a BatchedResponse (wire dict)."""
    return run_groups([subs], model, None if paths is None else [paths], max_rows_per_pass=None)[0]

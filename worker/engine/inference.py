"""One forward and at most one backward pass for a whole batch (protocol.md §5.4).

Every sub-request of a batched request is one row of the batch: right-padded with id 0, its own
ablations, its own loss or trace. The back-propagated scalar is the sum of the rows' seeds, so
each row's gradients are those of its own seed. Only the hook points a request needs are saved.

Two widths per row. Its *padded width* is what TDB's quirks read ("position -1 of the padded
sequence": the loss, negative token indices of a trace): the longest prompt of the row's own batch.
The *compute width* of the pass is wider: at least ``MIN_WIDTH`` and a multiple of ``ROW_ALIGN``,
so that every matrix product the pass runs has a row count that is a multiple of the BLAS kernel's
row block and attention sees at least MIN_WIDTH keys. Measured on MKL (worker/engine/groups.py
says how): with these shapes a row's values are bit-for-bit the same whatever else is in the
pass, which is what lets independent batches share one pass and each be answered exactly as
alone. Padding is causal and masked, so it changes no row's values beyond the last bits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .autoencoders.injection import install as install_autoencoders
from .families.base import ModelWeights
from .families.decoder import forward
from .hooks import HOOK_POINTS, Hooks, Key, overwrite
from .losses import LossSpec
from .tracing import (
    TracedNode,
    final_residual_loss_gradient,
    node_scalar,
    residual_gradient,
    value_direct_effect,
)

MIN_WIDTH = 16  # below it MKL's attention products round differently with the width
ROW_ALIGN = 4  # MKL's sgemm row block here: rows in its tail block round differently


def compute_width(width: int) -> int:
    """The pass width for rows whose longest padded width is ``width``."""
    return max(MIN_WIDTH, -(-width // ROW_ALIGN) * ROW_ALIGN)


@dataclass(frozen=True)
class Ablation:
    location: str
    layer: int | None  # None on a layered location: every layer (TDB quirk)
    indices: tuple  # ints and "All"
    backward: bool
    value: float


@dataclass
class ElementPlan:
    tokens: list[int]
    ablations: list[Ablation] = field(default_factory=list)
    loss: LossSpec | None = None
    trace: TracedNode | None = None


@dataclass
class PassResult:
    hooks: Hooks
    lengths: list[int]
    losses: list[float | None]
    traced_values: list[float | None]
    inference_time: float
    memory_before: float | None
    device: torch.device
    widths: list[int] = field(default_factory=list)  # each row's padded width (TDB's quirks)


def _ablation_keys(ab: Ablation, n_layers: int) -> list[Key]:
    if HOOK_POINTS[ab.location][1] and ab.layer is None:
        return [(ab.location, layer) for layer in range(n_layers)]
    return [(ab.location, ab.layer)]


def _register_ablation(hooks: Hooks, row: int, ab: Ablation, n_layers: int) -> None:
    index = (row,) + tuple(slice(None) if i == "All" else i for i in ab.indices)
    value = float(ab.value)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return overwrite(x, index, value)

    for key in _ablation_keys(ab, n_layers):
        if ab.backward:
            hooks.add_backward(key, apply)
        else:
            hooks.add_forward(key, apply)


def _memory_allocated(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    return float(torch.cuda.memory_allocated(device))


def run_pass(
    weights: ModelWeights,
    plans: list[ElementPlan],
    save_forward: set[Key],
    save_grad: set[Key],
    needs_backward: bool,
    device: torch.device,
    autoencoders=(),
    widths: list[int] | None = None,
) -> PassResult:
    """One pass over ``plans`` (one row each). ``widths`` are the rows' padded widths (default:
    the longest prompt, one batch); the pass itself runs at ``compute_width`` of the longest."""
    n_layers = weights.n_layers
    lengths = [len(p.tokens) for p in plans]
    widths = list(widths) if widths is not None else [max(lengths)] * len(plans)
    width = compute_width(max(widths))
    tokens = torch.zeros(len(plans), width, dtype=torch.long)
    pad = torch.ones(len(plans), width, dtype=torch.bool)
    for row, plan in enumerate(plans):
        tokens[row, : len(plan.tokens)] = torch.tensor(plan.tokens, dtype=torch.long)
        pad[row, : len(plan.tokens)] = False
    tokens, pad = tokens.to(device), pad.to(device)

    hooks = Hooks(
        save_forward=set(save_forward), save_grad=set(save_grad) if needs_backward else set()
    )
    install_autoencoders(hooks, list(autoencoders))
    for row, plan in enumerate(plans):
        for ab in plan.ablations:
            _register_ablation(hooks, row, ab, n_layers)
        if plan.trace is not None:
            hooks.keep_attached.add(plan.trace.residual_key)
            hooks.save_forward.add(plan.trace.residual_key)
            if plan.trace.downstream is not None:
                hooks.save_forward.add(plan.trace.downstream.residual_key)
            if plan.trace.trace_type == "V" and plan.trace.downstream is None:
                hooks.save_forward.add(("resid.post_mlp", n_layers - 1))

    memory_before = _memory_allocated(device)
    start = time.perf_counter()
    with torch.set_grad_enabled(needs_backward):
        logits = forward(weights, tokens, pad, hooks, needs_grad=needs_backward)
        rows = _Rows()
        losses, traced, seeds = [], [], []
        for row, plan in enumerate(plans):
            padded = widths[row]
            loss = plan.loss(rows.of(logits, row)[:padded]) if plan.loss is not None else None
            losses.append(_finite_or_none(loss))
            scalar = (
                _trace_scalar(weights, plan, row, hooks, padded, rows)
                if plan.trace is not None
                else None
            )
            traced.append(None if scalar is None else float(scalar.detach()))
            seed = scalar if scalar is not None else loss
            if seed is not None and seed.requires_grad:
                seeds.append(seed)
        if needs_backward and seeds:
            torch.stack(seeds).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    hooks.attached.clear()
    return PassResult(hooks, lengths, losses, traced, elapsed, memory_before, device, widths)


class _Rows:
    """Each row of a batch tensor as its own autograd view, one ``unbind`` per tensor.

    Indexing ``t[row]`` row by row makes the backward write a zero-filled gradient of the whole
    batch per row and add them up: for the logits of a shared pass ([rows, T, V]) that is
    quadratic in the rows, and dominated a sweep's backward. One unbind writes each row's
    gradient once, the same values (adding exact zeros changed no bit but a zero's sign)."""

    def __init__(self):
        self._rows: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}

    def of(self, tensor: torch.Tensor, row: int) -> torch.Tensor:
        if id(tensor) not in self._rows:  # the tensor is kept alongside, so its id stays its own
            self._rows[id(tensor)] = (tensor, tensor.unbind(0))
        return self._rows[id(tensor)][1][row]


def _finite_or_none(loss: torch.Tensor | None) -> float | None:
    if loss is None:
        return None
    value = float(loss.detach())
    return None if math.isnan(value) else value


def _trace_scalar(
    weights: ModelWeights, plan: ElementPlan, row: int, hooks: Hooks, padded: int, rows: _Rows
) -> torch.Tensor:
    node = plan.trace
    resid = rows.of(hooks.attached[node.residual_key], row)[:padded]
    if node.trace_type != "V":
        return node_scalar(weights, node, resid)
    if node.downstream is not None:
        down_resid = rows.of(hooks.saved[node.downstream.residual_key], row)[:padded]
        g_hat = residual_gradient(weights, node.downstream, down_resid)
    else:
        xf = rows.of(hooks.saved[("resid.post_mlp", weights.n_layers - 1)], row)[:padded]
        g_hat = final_residual_loss_gradient(weights, xf, plan.loss)
    return value_direct_effect(weights, node, resid, g_hat)

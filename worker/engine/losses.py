"""Loss functions that seed the backward pass from the output (engine.md §4).

Each loss reads the logits of one batch element at position -1 of the *padded* sequence (TDB
quirk, kept), except `zero`, which touches every logit so that the whole graph is connected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossSpec:
    name: str  # logit_diff | logit_minus_mean | probs | zero
    targets: tuple[int, ...]
    distractors: tuple[int, ...]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The loss of one element from its logits [T_padded, V]."""
        return LOSSES[self.name](logits, self)


def _logit_diff(logits: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    last = logits[-1]
    value = last[list(spec.targets)].mean()
    if spec.distractors:
        value = value - last[list(spec.distractors)].mean()
    return value


def _logit_minus_mean(logits: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    last = logits[-1]
    return last[list(spec.targets)].mean() - last.mean()


def _probs(logits: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    return torch.softmax(logits[-1], dim=-1)[list(spec.targets)].sum()


def _zero(logits: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    return 0 * logits.sum()


LOSSES: dict[str, Callable[[torch.Tensor, LossSpec], torch.Tensor]] = {
    "logit_diff": _logit_diff,
    "logit_minus_mean": _logit_minus_mean,
    "probs": _probs,
    "zero": _zero,
}

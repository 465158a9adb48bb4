"""Ranking derived scalars into node lists (protocol.md §5.5, engine.md §8).

A *store* holds, for one sub-request and one group, each DST's tensors by layer. Selection is K
per DST and per direction (TDB quirk), the bottom list is written in descending order (TDB quirk),
and ties are broken deterministically: value, then DST position in the group, then layer, then
flat index (engine.md §8.3). Only K elements per DST are ever sorted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

Node = tuple[str, tuple[int, ...], int | None, str]  # (node type, tensor indices, layer, pass type)


@dataclass
class DstTensors:
    """One DST of one group for one sub-request: tensors by layer (ascending), both passes."""

    name: str
    node_type: str
    forward: dict[int | None, torch.Tensor]
    backward: dict[int | None, torch.Tensor] | None = None


@dataclass
class Selection:
    values: list[float] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)


CHUNK = 4096


def fast_topk(values: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.topk` of a long 1-D tensor (the same values; the same indices up to the order of
    equal values), an order of magnitude faster on CPU for small k: only `_candidates` are
    searched."""
    positions = _candidates(values, k, largest)
    if positions is None:
        return _chunked_topk(values, k, largest)
    best_values, best = torch.topk(values[positions], k, largest=largest)
    return best_values, positions[best]


def _candidates(values: torch.Tensor, k: int, largest: bool) -> torch.Tensor | None:
    """Ascending positions of a few chunks of `values` (and its tail) that hold its k extreme
    entries and, of the entries equal to the k-th, the k of smallest index; None where chunking
    does not pay (short tensors, large k) or NaNs rank. Each chunk's extreme is an entry, so
    with x the k-th best chunk extreme, every entry beyond x lies in a chunk whose extreme is
    beyond x (fewer than k chunks), and the first k chunks whose extreme equals x each hold an
    entry equal to x, of smaller index than any such entry in a later one."""
    n = values.numel()
    rows = n // CHUNK
    if rows < 16 or 4 * k > rows:
        return None
    body = values[: rows * CHUNK].view(rows, CHUNK)
    extreme = body.amax(dim=1) if largest else body.amin(dim=1)
    if bool(torch.isnan(extreme).any()):
        return None
    kth = torch.topk(extreme, k, largest=largest).values[-1]
    beyond = torch.nonzero(extreme > kth if largest else extreme < kth).flatten()
    tied = torch.nonzero(extreme == kth).flatten()[:k]
    chunks = torch.cat([beyond, tied]).sort().values
    in_chunk = torch.arange(CHUNK, device=values.device)
    tail = torch.arange(rows * CHUNK, n, device=values.device)
    return torch.cat([(chunks[:, None] * CHUNK + in_chunk).flatten(), tail])


def _chunked_topk(values: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each chunk first (parallel over chunks), then the k best of those."""
    n = values.numel()
    if n <= 16 * CHUNK or k > CHUNK:
        return torch.topk(values, k, largest=largest)
    fill = float("-inf") if largest else float("inf")
    padded = torch.cat([values, values.new_full(((-n) % CHUNK,), fill)])
    chunk_values, chunk_indices = torch.topk(padded.view(-1, CHUNK), k, dim=1, largest=largest)
    offsets = torch.arange(0, padded.numel(), CHUNK, device=values.device)[:, None]
    best_values, best = torch.topk(chunk_values.flatten(), k, largest=largest)
    indices = (chunk_indices + offsets).flatten()[best]
    if bool((indices >= n).any()):  # the padding tied with real ±inf values: be exact instead
        return torch.topk(values, k, largest=largest)
    return best_values, indices


def select_indices(values: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Indices of the k extreme entries of a 1-D tensor, ordered by (value, index)."""
    if k < values.numel():
        positions = _candidates(values, k + 1, largest)
        if positions is not None:  # the same answer, from a few chunks of a long tensor
            return positions[_select_indices(values[positions], k, largest)]
    return _select_indices(values, k, largest)


def _select_indices(values: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    n = values.numel()
    if k >= n:
        candidates = torch.arange(n, device=values.device)
    else:
        top_values, top_indices = fast_topk(values, k + 1, largest)
        threshold = top_values[k - 1]
        if bool(top_values[k] != threshold):  # no tie across the boundary: topk chose the set
            candidates = top_indices[:k].sort().values
        else:
            beyond = torch.nonzero(values > threshold if largest else values < threshold).flatten()
            ties = torch.nonzero(values == threshold).flatten()[: k - beyond.numel()]
            candidates = torch.cat([beyond, ties]).sort().values
    order = torch.sort(values[candidates], descending=largest, stable=True).indices
    return candidates[order]


def _sliced(tensor: torch.Tensor, token_index: int | None) -> torch.Tensor:
    if token_index is None:
        return tensor
    return tensor[token_index].unsqueeze(0)


def select_dst(
    dst: DstTensors, k: int | None, largest: bool, token_index: int | None, flat=None
) -> Selection:
    """The k extreme nodes of one DST; ``flat`` is its layers' values flattened, when the caller
    already has them (both directions of a group read the same, e.g. 8M latent values)."""
    layers = list(dst.forward)
    tensors = [_sliced(dst.forward[layer], token_index) for layer in layers]
    if flat is None:
        flat = flat_values(dst, token_index)
    count = flat.numel() if k is None else min(k, flat.numel())
    chosen = select_indices(flat, count, largest).tolist()
    offsets = [0]
    for t in tensors:
        offsets.append(offsets[-1] + t.numel())
    picked_values = flat[chosen].tolist() if chosen else []
    out = Selection()
    for flat_index, value in zip(chosen, picked_values, strict=True):
        pos = _bisect(offsets, flat_index)
        shape = tensors[pos].shape
        indices = list(_unravel(flat_index - offsets[pos], shape))
        if token_index is not None:
            indices[0] = token_index
        out.values.append(value)
        out.nodes.append((dst.node_type, tuple(indices), layers[pos], "forward"))
    return out


def flat_values(dst: DstTensors, token_index: int | None) -> torch.Tensor:
    return torch.cat(
        [_sliced(dst.forward[layer], token_index).reshape(-1) for layer in dst.forward]
    )


def _bisect(offsets: list[int], flat_index: int) -> int:
    lo, hi = 0, len(offsets) - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if offsets[mid] <= flat_index:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _unravel(index: int, shape: torch.Size) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(index % size)
        index //= size
    return tuple(reversed(out))


def rank_group(dsts: list[DstTensors], k: int | None, token_index: int | None) -> list[Node]:
    """Top list then bottom list of one group, each ordered by descending value (§5.5.2)."""
    if k is None:
        k = sum(sum(_sliced(t, token_index).numel() for t in d.forward.values()) for d in dsts)
    selections = []
    for dst in dsts:  # each DST flattened once for both directions
        flat = flat_values(dst, token_index)
        selections.append(
            [select_dst(dst, k, largest, token_index, flat) for largest in (True, False)]
        )
        del flat
    nodes: list[Node] = []
    for direction in (0, 1):
        values: list[float] = []
        found: list[Node] = []
        for per_direction in selections:
            sel = per_direction[direction]
            values += sel.values
            found += sel.nodes
        order = sorted(range(len(values)), key=lambda i: -values[i])  # stable: ties keep DST order
        nodes += [found[i] for i in order]
    return nodes


def rank_spec(
    groups: dict[str, list[DstTensors]], k: int | None, token_index: int | None
) -> list[Node]:
    """The node list of one multiple-top-k spec for one sub-request, duplicates removed."""
    nodes: list[Node] = []
    for dsts in groups.values():
        nodes += rank_group(dsts, k, token_index)
    return list(dict.fromkeys(nodes))


def group_values(dsts: list[DstTensors], nodes: list[Node]) -> list[float]:
    """Each node's forward value from the DST of the group that has its node type (§5.5.4)."""
    by_type = {d.node_type: d for d in dsts}
    batches: dict[tuple, list[int]] = {}
    for i, (node_type, _, layer, _) in enumerate(nodes):
        batches.setdefault((node_type, layer), []).append(i)
    out = [0.0] * len(nodes)
    for (node_type, layer), positions in batches.items():
        dst = by_type.get(node_type)
        if dst is None or layer not in dst.forward:
            raise ValueError(f"no value of node type {node_type} at layer {layer}")
        tensor = dst.forward[layer]
        index = tuple(
            torch.tensor(axis) for axis in zip(*(nodes[i][1] for i in positions), strict=True)
        )
        for i, value in zip(positions, tensor[index].tolist(), strict=True):
            out[i] = value
    return out


def intermediate_sum(dst: DstTensors, kept_axes: list[int], include_backward: bool) -> torch.Tensor:
    """Sum of the DST over every axis not kept and over every layer (and pass) (§5.5.5)."""
    entries = list(dst.forward.values())
    if include_backward and dst.backward is not None:
        entries += list(dst.backward.values())
    total = None
    for tensor in entries:
        dropped = [axis for axis in range(tensor.dim()) if axis not in kept_axes]
        part = tensor.sum(dim=dropped) if dropped else tensor
        total = part if total is None else total + part
    return total


def tensor_nd(tensor: torch.Tensor) -> dict:
    """A Tensor0D..3D wire object; non-finite entries of arrays become -999.0 (TDB's rule)."""
    rank = tensor.dim()
    if rank == 0:
        value = float(tensor)
        if not math.isfinite(value):
            raise ValueError("a non-finite intermediate sum cannot be written")
        return {"tensorType": "tensor_0d", "value": value}
    if rank > 3:
        raise ValueError("intermediate sums of four or more axes cannot be written")
    clean = torch.where(torch.isfinite(tensor), tensor, torch.full_like(tensor, -999.0))
    return {"tensorType": f"tensor_{rank}d", "value": clean.tolist()}

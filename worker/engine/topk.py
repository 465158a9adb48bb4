"""Ranking derived scalars into node lists (protocol.md §5.5, engine.md §8).

A *store* holds, for one sub-request and one group, each DST's tensors by layer. Selection is K
per DST and per direction (TDB quirk), the bottom list is written in descending order (TDB quirk),
and ties are broken deterministically: value, then DST position in the group, then layer, then
flat index (engine.md §8.3). Only K elements per DST are ever sorted.
"""

from __future__ import annotations

import functools
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
    """`torch.topk` of a long 1-D tensor, an order of magnitude faster on CPU for small k: each
    chunk's extreme first (one pass, vectorised), then the k best of only the chunks that can
    hold them (``_chunks_holding_best``), or of every chunk when that cannot be told."""
    n = values.numel()
    if n <= 16 * CHUNK or k > CHUNK:
        return torch.topk(values, k, largest=largest)
    fill = float("-inf") if largest else float("inf")
    pad = (-n) % CHUNK
    padded = torch.cat([values, values.new_full((pad,), fill)]) if pad else values.contiguous()
    rows = padded.view(-1, CHUNK)
    picked = _chunks_holding_best(rows, k, largest)
    if picked is None:
        chunk_values, chunk_indices = torch.topk(rows, k, dim=1, largest=largest)
        offsets = torch.arange(0, padded.numel(), CHUNK, device=values.device)[:, None]
    else:
        chunk_values, chunk_indices = torch.topk(rows[picked], k, dim=1, largest=largest)
        offsets = (picked * CHUNK)[:, None]
    best_values, best = torch.topk(chunk_values.flatten(), k, largest=largest)
    indices = (chunk_indices + offsets).flatten()[best]
    if bool((indices >= n).any()):  # the padding tied with real ±inf values: be exact instead
        return torch.topk(values, k, largest=largest)
    return best_values, indices


def _chunks_holding_best(rows: torch.Tensor, k: int, largest: bool) -> torch.Tensor | None:
    """Chunk numbers (ascending) among which the k best values of ``rows`` all are, at most
    2k - 1 of them; None when there is no gain (few chunks, NaNs)."""
    if 2 * k >= rows.shape[0]:
        return None
    best = _best_chunks(rows.amax(dim=1) if largest else rows.amin(dim=1), k, largest)
    return None if best is None else best[0]


def _best_chunks(extremes: torch.Tensor, k: int, largest: bool):
    """Of chunks with these extremes, those (ascending) that hold the k best values of all, and
    τ, the k-th best extreme; None with NaNs.

    The k-th best value is at least as good as τ (k chunks reach τ), so every value as good as
    it lies in a chunk whose extreme is as good as τ: the chunks strictly better than τ (fewer
    than k) and, of those that reach τ exactly, k (each holds a τ: enough of them for the ties,
    as good as any others)."""
    if bool(torch.isnan(extremes).any()):
        return None
    tau = torch.topk(extremes, k, largest=largest).values[-1]
    better = torch.nonzero(extremes > tau if largest else extremes < tau).flatten()
    reaching = torch.nonzero(extremes == tau).flatten()[:k]
    return torch.cat([better, reaching]).sort().values, tau


def select_indices(values: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Indices of the k extreme entries of a 1-D tensor, ordered by (value, index)."""
    n = values.numel()
    if k >= n:
        candidates = torch.arange(n, device=values.device)
    else:
        top_values, top_indices = fast_topk(values, k + 1, largest)
        threshold = top_values[k - 1]
        if bool(top_values[k] != threshold):  # no tie across the boundary: topk chose the set
            candidates = top_indices[:k].sort().values
        else:
            # the values strictly beyond the threshold are fewer than k: all among the k + 1
            beyond = top_indices[top_values > threshold if largest else top_values < threshold]
            ties = first_equal(values, threshold, k - beyond.numel())
            candidates = torch.cat([beyond, ties]).sort().values
    order = torch.sort(values[candidates], descending=largest, stable=True).indices
    return candidates[order]


TIE_CHUNK = 1 << 16


def first_equal(values: torch.Tensor, value, count: int) -> torch.Tensor:
    """The first ``count`` indices where ``values == value``, ascending, scanned chunk by chunk:
    the ties are often a long run (the zeros of 8M inactive latents) that need not be listed."""
    found, total = [], 0
    for start in range(0, values.numel(), TIE_CHUNK):
        if total >= count:
            break
        hits = torch.nonzero(values[start : start + TIE_CHUNK] == value).flatten()
        found.append(hits[: count - total] + start)
        total += found[-1].numel()
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.long, device=values.device)


def _sliced(tensor: torch.Tensor, token_index: int | None) -> torch.Tensor:
    if token_index is None:
        return tensor
    return tensor[token_index].unsqueeze(0)


def select_dst(
    dst: DstTensors, k: int | None, largest: bool, token_index: int | None, flat=None
) -> Selection:
    """The k extreme nodes of one DST; ``flat`` is its layers' values flattened, when the caller
    already has them; otherwise the layers are ranked where they are (``select_layered``)."""
    layers = list(dst.forward)
    tensors = [_sliced(dst.forward[layer], token_index) for layer in layers]
    parts = [t.reshape(-1) for t in tensors]
    n = sum(part.numel() for part in parts)
    count = n if k is None else min(k, n)
    if flat is None:
        chosen_t, values_t = select_layered(parts, count, largest)
    else:
        chosen_t = select_indices(flat, count, largest)
        values_t = flat[chosen_t]
    chosen, picked_values = chosen_t.tolist(), values_t.tolist()
    offsets = [0]
    for t in tensors:
        offsets.append(offsets[-1] + t.numel())
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


def select_layered(parts: list[torch.Tensor], k: int, largest: bool):
    """``select_indices`` of the 1-D ``parts`` end to end (flat indices, and their values),
    without building that concatenation (8M values per latent DST): the k + 1 best of all are
    among each part's own k + 1 best (any other value has k + 1 at least as good in its part),
    and ties across the boundary are scanned part by part, in order."""
    offsets = [0]
    for part in parts:
        offsets.append(offsets[-1] + part.numel())
    if len(parts) == 1 or k + 1 >= offsets[-1] or (k + 1) * len(parts) >= offsets[-1]:
        flat = torch.cat(parts) if len(parts) > 1 else parts[0]
        chosen = select_indices(flat, k, largest)
        return chosen, flat[chosen]
    candidates = _chunk_candidates(parts, offsets, k + 1, largest)
    if candidates is None:
        values, indices = _parts_best(parts, offsets, k + 1, largest)
        indices_t = torch.cat(indices)
        by_index = indices_t.argsort()
        candidates = torch.cat(values)[by_index], indices_t[by_index]
    values_t, indices_t = candidates
    best = select_indices(values_t, k + 1, largest)  # by (value, flat index)
    top_values, top_indices = values_t[best], indices_t[best]
    threshold = top_values[k - 1]
    if bool(top_values[k] != threshold):  # no tie across the boundary
        return top_indices[:k], top_values[:k]
    beyond = top_values > threshold if largest else top_values < threshold
    chosen, chosen_values = [top_indices[beyond]], [top_values[beyond]]
    wanted = k - int(beyond.sum())
    for part, offset in zip(parts, offsets, strict=False):
        if wanted <= 0:
            break
        ties = first_equal(part, threshold, wanted)
        chosen.append(ties + offset)
        chosen_values.append(part[ties])
        wanted -= ties.numel()
    return torch.cat(chosen), torch.cat(chosen_values)


def _parts_best(parts: list[torch.Tensor], offsets: list[int], k: int, largest: bool):
    """Each part's k best values and their flat indices (a part of k or fewer: all of it).
    Parts of one length that torch.topk ranks whole are ranked in one batched call: a DST's
    layers are usually such parts, and one call per layer cost more than the ranking itself."""
    values: list = [None] * len(parts)
    indices: list = [None] * len(parts)
    same_length: dict[int, list[int]] = {}
    for n, (part, offset) in enumerate(zip(parts, offsets, strict=False)):
        if part.numel() <= k:
            values[n] = part
            indices[n] = torch.arange(part.numel(), device=part.device) + offset
        elif part.numel() <= 16 * CHUNK:  # what fast_topk leaves to torch.topk
            same_length.setdefault(part.numel(), []).append(n)
        else:
            part_values, part_indices = fast_topk(part, k, largest)
            values[n], indices[n] = part_values, part_indices + offset
    for members in same_length.values():
        rows = torch.stack([parts[n] for n in members])
        best_values, best = torch.topk(rows, k, dim=1, largest=largest)
        for row, n in enumerate(members):
            values[n], indices[n] = best_values[row], best[row] + offsets[n]
    return values, indices


LAYER_CHUNK = 1024  # the longest chunk; a part is cut in chunks of a divisor of its length


@functools.lru_cache(maxsize=256)
def _chunk_length(n: int) -> int:
    """The longest chunk of LAYER_CHUNK // 4 .. LAYER_CHUNK values that divides ``n`` (a part
    is then a view, not a padded copy), or LAYER_CHUNK where none does."""
    for length in range(min(n, LAYER_CHUNK), LAYER_CHUNK // 4 - 1, -1):
        if n % length == 0:
            return length
    return LAYER_CHUNK


def _chunk_candidates(parts, offsets, want: int, largest: bool):
    """The values (and flat indices, ascending) of the chunks, across all parts, that hold the
    ``want`` best of all (``_best_chunks`` over every part's chunks at once):
    one extreme per chunk, then at most 2 want - 1 chunks, instead of a top-k per part (a
    request's MLP DSTs are 12 parts of 50k-180k values, each ranked twice per sub-request).
    None when that gains little (fewer than 8 want chunks) or cannot be told (NaNs, an infinite
    threshold)."""
    fill = float("-inf") if largest else float("inf")
    rows = []
    for part in parts:
        length = _chunk_length(part.numel())
        pad = (-part.numel()) % length
        padded = torch.cat([part, part.new_full((pad,), fill)]) if pad else part
        rows.append(padded.view(-1, length))
    counts = [r.shape[0] for r in rows]
    if sum(counts) < 8 * want:
        return None
    extremes = torch.cat([r.amax(dim=1) if largest else r.amin(dim=1) for r in rows])
    best = _best_chunks(extremes, want, largest)
    if best is None or not bool(torch.isfinite(best[1])):  # an infinite τ may be padding's
        return None
    picked = best[0].tolist()
    firsts = [0]
    for count in counts:
        firsts.append(firsts[-1] + count)
    values, indices = [], []
    for chunk in picked:
        p = _bisect(firsts, chunk)
        length = rows[p].shape[1]
        start = (chunk - firsts[p]) * length
        end = min(start + length, parts[p].numel())  # the padding is never a candidate
        values.append(parts[p][start:end])
        indices.append(torch.arange(start + offsets[p], end + offsets[p], device=parts[p].device))
    return torch.cat(values), torch.cat(indices)


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
    return merge_group([select_both(dst, k, token_index) for dst in dsts])


def select_both(dst: DstTensors, k: int | None, token_index: int | None) -> list[Selection]:
    """One DST's top and bottom selections (k None: all of its entries, as in its group)."""
    return [select_dst(dst, k, largest, token_index) for largest in (True, False)]


def merge_group(selections: list[list[Selection]]) -> list[Node]:
    """A group's node list from its DSTs' `select_both`, in DST order: the top list, then the
    bottom list, each by descending value, ties in DST order."""
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

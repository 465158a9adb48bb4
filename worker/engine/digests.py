"""What a multiple-top-k spec's response reads from its DSTs, taken while each DST is dense, so
that the dense tensors are freed DST by DST instead of living until the responses are written.

A spec's response reads three things from each DST of each of its groups: the sub-request's own
ranking, the intermediate sums of the spec's kept axes, and the forward values at the batch's
node list. That list is the union over the batch's sub-requests (TDB's rule), known only once
every sub-request is ranked, so the values cannot be taken at ranking time; each layer keeps
instead its entries whose bits are not +0.0 (`KeptValues`), from which any value reads as the
dense tensor's, bit for bit (-0.0 included). The latent DSTs of the node table are [tokens,
32,768] per layer, AE and sub-request, and zero at the inactive latents (about 97% of them):
held dense until the responses were written they were 1.1 GB at 60 tokens (issue 11); kept so
they are a few percent of that, and the dense ones exist one at a time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from models.wire import protocol as p
from models.wire.enums import DerivedScalarType
from models.wire.shapes import DST_INFO

from .planning import SubRequestPlan, derives_gradients, dst_store, groups_of, str_value
from .topk import DstTensors, Node, intermediate_sum, merge_group, select_both
from .view import ElementView

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class KeptValues:
    """A tensor's entries whose bits are not +0.0 (flat indices ascending, and their values);
    indexed with one index tensor per axis, it gives what the dense tensor gives."""

    def __init__(self, tensor: torch.Tensor, indices: torch.Tensor, values: torch.Tensor):
        self.shape = tensor.shape
        self.dtype = tensor.dtype
        self.device = tensor.device
        self.indices = indices
        self.values = values

    @property
    def nbytes(self) -> int:
        return self.indices.numel() * self.indices.element_size() + self.values.numel() * (
            self.values.element_size()
        )

    def dense(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        out.view(-1)[self.indices] = self.values
        return out

    def __getitem__(self, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if not (
            isinstance(index, tuple)
            and len(index) == len(self.shape)
            and all(
                isinstance(axis, torch.Tensor)
                and axis.dim() == 1
                and bool(((axis >= 0) & (axis < size)).all())
                for axis, size in zip(index, self.shape, strict=True)
            )
        ):
            return self.dense()[index]  # partial, negative or out-of-range: as the tensor does
        flat = torch.zeros_like(index[0])
        for axis, size in zip(index, self.shape, strict=True):
            flat = flat * size + axis.to(self.device)
        out = torch.zeros(flat.shape, dtype=self.dtype, device=self.device)
        if self.indices.numel():
            at = torch.searchsorted(self.indices, flat).clamp(max=self.indices.numel() - 1)
            found = self.indices[at] == flat
            out[found] = self.values[at[found]]
        return out


def kept(tensor: torch.Tensor, hint: torch.Tensor | None = None) -> torch.Tensor | KeptValues:
    """``tensor`` as `KeptValues` when that is smaller (a sparse float tensor), else itself.

    ``hint``: flat indices (ascending) that may hold all of its entries that are not +0.0, as
    another DST of the same latents does (an inactive latent is 0 in each): when a count says
    they do, the scan that lists them is skipped."""
    if not tensor.is_floating_point() or tensor.element_size() not in _BITS:
        return tensor
    flat = tensor.detach().reshape(-1)
    bits = flat.view(_BITS[flat.element_size()])
    per_entry = 8 + flat.element_size()  # an int64 index and the value
    if flat.device.type != "cpu":
        indices = torch.nonzero(bits).flatten()
        if indices.numel() * per_entry >= flat.numel() * flat.element_size():
            return tensor
        return KeptValues(tensor, indices, flat[indices])
    # on CPU numpy's scans and gathers are several times faster than torch.nonzero and indexing
    array = bits.numpy()  # the values are gathered as their bits (numpy has no bfloat16)
    count = np.count_nonzero(array)
    if count * per_entry >= flat.numel() * flat.element_size():
        return tensor
    if hint is not None and hint.numel() * per_entry < flat.numel() * flat.element_size():
        at = hint.numpy()
        if np.count_nonzero(array[at]) == count:
            return KeptValues(tensor, hint, torch.from_numpy(array[at]).view(flat.dtype))
    at = np.flatnonzero(array != 0)
    return KeptValues(tensor, torch.from_numpy(at), torch.from_numpy(array[at]).view(flat.dtype))


@dataclass
class TopKDigest:
    """One multiple-top-k spec of one sub-request, as its response needs it."""

    nodes: list[Node]  # the sub-request's own ranking, duplicates removed
    groups: dict[str, list[DstTensors]]  # forward layers only, each kept (`kept`)
    sums: dict[str, dict[str, torch.Tensor]]  # group -> DST -> intermediate sum


def store_uses(plan: SubRequestPlan) -> Counter:
    """How many times each (DST, derive) store of ``plan`` is read by its specs; the stores of
    specs that read them dense at response time (derived scalars) are never released."""
    uses: Counter = Counter()
    for spec in plan.specs.values():
        derive = derives_gradients(spec)
        for dsts in groups_of(spec).values():
            for dst in dsts:
                forever = not isinstance(spec, p.MultipleTopKDerivedScalarsRequestSpec)
                uses[(dst, derive)] += 1 << 30 if forever else 1
    return uses


def digest_top_k(
    plan: SubRequestPlan,
    view: ElementView,
    spec,
    path: str,
    uses: Counter | None = None,
    hints: dict | None = None,
) -> TopKDigest:
    """Rank ``spec`` for ``plan`` and keep what its response reads, DST by DST; each dense store
    is released (from ``plan.stores``) once ``uses`` counts no other reader of it. ``hints``:
    the kept indices of each (node type, layer, shape) so far (`kept`), shared by the plan's
    specs."""
    hints = {} if hints is None else hints
    derive = derives_gradients(spec)
    keep = {str_value(d) for d in spec.dimensions_to_keep_for_intermediate_sum}
    nodes: list[Node] = []
    groups: dict[str, list[DstTensors]] = {}
    sums: dict[str, dict[str, torch.Tensor]] = {}
    for gid, dsts in groups_of(spec).items():
        selections, groups[gid], sums[gid] = [], [], {}
        for dst in dsts:
            store = dst_store(plan, view, dst, derive, path)
            selections.append(select_both(store, spec.top_and_bottom_k, spec.token_index))
            dims = DST_INFO[DerivedScalarType(dst)].dims
            axes = [axis for axis, dim in enumerate(dims) if str_value(dim) in keep]
            sums[gid][dst] = intermediate_sum(store, axes, derive)
            forward = {}
            for layer, tensor in store.forward.items():
                forward[layer] = kept(tensor, hints.get((store.node_type, layer, tensor.shape)))
                if isinstance(forward[layer], KeptValues):
                    hints[(store.node_type, layer, tensor.shape)] = forward[layer].indices
            groups[gid].append(DstTensors(store.name, store.node_type, forward))
            if uses is not None:
                uses[(dst, derive)] -= 1
                if uses[(dst, derive)] <= 0:
                    plan.stores.pop((dst, derive), None)
            del store
        nodes += merge_group(selections)
    return TopKDigest(list(dict.fromkeys(nodes)), groups, sums)

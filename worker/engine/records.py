"""Node records: the top-activating sequences of every node of some kinds, over many batches.

A ``RecordBuilder`` sees the corpus one batch of sequences at a time and keeps, per node, only
the ``top_k`` best sequences so far: their scores, ids and activations (per token for a neuron,
per token pair for a head, flattened row by row over the causal triangle as TDB's records store
them). Its memory is nodes x top_k x sequence length, whatever the corpus size; no batch's
activations outlive the batch. The random sample is a second, small pass over sequences chosen
up front (``random_sequences``).

Each node kind is one ``Kind``: the hook points it reads and how it turns them into activations
``[batch, nodes, width]``. Neurons read ``mlp.post_act``; heads read the attention pattern and the
value vectors (a head's write from key k to query q is ``probs[q, k] * (v[k] @ W_O)``, so its norm
is ``probs[q, k] * |v[k] @ W_O|``, no tokens x tokens x d_model tensor). An autoencoder latent
kind (``LatentKind``) reads its AE's input point and applies its encoder.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .families.gpt2 import forward
from .hooks import Hooks


@dataclass(frozen=True)
class Kind:
    name: str
    dst: str
    points: tuple[str, ...]

    def width(self, seq_len: int) -> int:
        return seq_len * (seq_len + 1) // 2 if self.dst == "attn_write_norm" else seq_len

    def activations(self, model, layer: int, saved: dict) -> torch.Tensor:
        """``[batch, nodes, width]`` for this layer from the saved hook points."""
        if self.dst == "mlp_post_act":
            return saved[("mlp.post_act", layer)].transpose(1, 2)
        probs = saved[("attn.qk_probs", layer)]  # [B, q, k, H]
        v = saved[("attn.v", layer)]  # [B, k, H, e]
        w_o = model.weights.layers[layer].W_O  # [H, e, d]
        value_norms = torch.einsum("bkhe,hed->bkhd", v, w_o).norm(dim=-1)  # [B, k, H]
        writes = probs * value_norms[:, None, :, :]  # [B, q, k, H]
        t = writes.shape[1]
        q, k = torch.tril_indices(t, t, device=writes.device)
        return writes[:, q, k, :].transpose(1, 2)  # [B, H, T(T+1)/2]

    def n_nodes(self, model) -> int:
        return model.meta.d_mlp if self.dst == "mlp_post_act" else model.meta.n_heads

    def point_names(self, model) -> tuple[str, ...]:
        return self.points

    def layers(self, model) -> list[int]:
        return list(range(model.meta.n_layers))


@dataclass(frozen=True)
class LatentKind(Kind):
    """The latents of the served AE of one slot (``mlp`` or ``attention``), at the layers it
    covers: the offline latent DST (``mlp_autoencoder_latent``, ``attention_autoencoder_latent``),
    the AE's encoder applied to its input point as the engine's offline latent DSTs do (an
    ``resid_delta_mlp`` AE reads the MLP's write without ``b_out``, engine.md §9.6)."""

    slot: str = "mlp"

    def ae(self, model):
        ae = model.autoencoders.get(self.slot)
        if ae is None:
            raise ValueError(f"records of {self.name} need a served {self.slot} autoencoder")
        return ae

    def point_names(self, model) -> tuple[str, ...]:
        ae = self.ae(model)
        return ("mlp.post_act",) if ae.input_dst == "resid_delta_mlp" else (ae.input_point,)

    def layers(self, model) -> list[int]:
        return sorted(self.ae(model).layers)

    def n_nodes(self, model) -> int:
        return self.ae(model).n_latents

    def activations(self, model, layer: int, saved: dict) -> torch.Tensor:
        ae = self.ae(model)
        x = saved[(self.point_names(model)[0], layer)]
        if ae.input_dst == "resid_delta_mlp":
            x = x @ model.weights.layers[layer].w_out
        return ae.layers[layer].encode(x).transpose(1, 2)  # [B, latents, T]


KINDS = {
    "mlp_neuron": Kind("mlp_neuron", "mlp_post_act", ("mlp.post_act",)),
    "attention_head": Kind("attention_head", "attn_write_norm", ("attn.qk_probs", "attn.v")),
    "mlp_autoencoder_latent": LatentKind("mlp_autoencoder_latent", "mlp_autoencoder_latent", ()),
    "attention_autoencoder_latent": LatentKind(
        "attention_autoencoder_latent", "attention_autoencoder_latent", (), slot="attention"
    ),
}


@dataclass
class TopSequences:
    """The best ``k`` sequences of each node of one layer so far."""

    scores: torch.Tensor  # [k, nodes]
    ids: torch.Tensor  # [k, nodes], -1: empty
    activations: torch.Tensor  # [k, nodes, width]

    @classmethod
    def empty(cls, k: int, nodes: int, width: int) -> TopSequences:
        return cls(
            torch.full((k, nodes), float("-inf")),
            torch.full((k, nodes), -1, dtype=torch.long),
            torch.zeros(k, nodes, width),
        )

    def update(self, activations: torch.Tensor, valid: torch.Tensor, ids: torch.Tensor) -> None:
        """Merge a batch: ``activations`` [B, nodes, width], ``valid`` [B, width] bool."""
        masked = activations.masked_fill(~valid[:, None, :], float("-inf"))
        scores = torch.cat([self.scores, masked.amax(dim=2)])  # [k + B, nodes]
        best = scores.topk(self.scores.shape[0], dim=0).indices  # [k, nodes]
        all_ids = torch.cat([self.ids, ids[:, None].expand(-1, scores.shape[1])])
        all_acts = torch.cat([self.activations, activations.masked_fill(~valid[:, None, :], 0)])
        self.scores = scores.gather(0, best)
        self.ids = all_ids.gather(0, best)
        self.activations = all_acts.gather(0, best[:, :, None].expand(-1, -1, all_acts.shape[2]))


@dataclass
class NodeResult:
    kind: str
    dst: str
    layer: int
    index: int
    max_activation: float
    top: list[tuple[int, list[float]]]  # (sequence id, activations)
    random: list[tuple[int, list[float]]] = field(default_factory=list)


def random_sequences(n_sequences: int, k: int, seed: int = 0) -> list[int]:
    """The ids of the random sample, chosen before the pass (the same for every node)."""
    return sorted(random.Random(seed).sample(range(n_sequences), min(k, n_sequences)))


class RecordBuilder:
    def __init__(self, model, kinds: list[str], top_k: int, seq_len: int) -> None:
        self.model, self.seq_len, self.top_k = model, seq_len, top_k
        self.kinds = [KINDS[k] for k in kinds]
        self.tops = {
            (kind.name, layer): TopSequences.empty(top_k, kind.n_nodes(model), kind.width(seq_len))
            for kind in self.kinds
            for layer in kind.layers(model)
        }

    def _pass(self, sequences: list[list[int]]) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """One forward pass; the saved points and the token mask [B, T] and pair mask [B, W]."""
        device = self.model.device
        t = self.seq_len
        tokens = torch.zeros(len(sequences), t, dtype=torch.long)
        pad = torch.ones(len(sequences), t, dtype=torch.bool)
        for row, seq in enumerate(sequences):
            tokens[row, : len(seq)] = torch.tensor(seq)
            pad[row, : len(seq)] = False
        hooks = Hooks()
        for kind in self.kinds:
            for layer in kind.layers(self.model):
                hooks.save_forward.update((point, layer) for point in kind.point_names(self.model))
        with torch.no_grad():
            forward(self.model.weights, tokens.to(device), pad.to(device), hooks, needs_grad=False)
        valid = ~pad
        q, k = torch.tril_indices(t, t)
        return hooks.saved, valid, valid[:, q] & valid[:, k]

    def _layers(
        self, sequences: list[list[int]]
    ) -> Iterator[tuple[Kind, int, torch.Tensor, torch.Tensor]]:
        saved, tokens_valid, pairs_valid = self._pass(sequences)
        for kind in self.kinds:
            valid = pairs_valid if kind.dst == "attn_write_norm" else tokens_valid
            for layer in kind.layers(self.model):
                yield kind, layer, kind.activations(self.model, layer, saved).float().cpu(), valid

    def add_batch(self, sequences: list[list[int]], ids: list[int]) -> None:
        id_tensor = torch.tensor(ids, dtype=torch.long)
        for kind, layer, activations, valid in self._layers(sequences):
            self.tops[(kind.name, layer)].update(activations, valid, id_tensor)

    def results(
        self, lengths: dict[int, int], random_batch: dict[int, list[int]]
    ) -> Iterator[NodeResult]:
        """Every node's record: ``lengths`` gives each sequence's length, ``random_batch`` the
        sequences of the random sample (id -> tokens)."""
        sample = self._sample(random_batch)
        for (kind_name, layer), top in self.tops.items():
            kind = KINDS[kind_name]
            ids, scores = top.ids.T.tolist(), top.scores[0].tolist()  # per node
            acts = top.activations.transpose(0, 1).tolist()  # [nodes][k][width], one conversion
            randoms = sample.get((kind_name, layer))
            for index, node_ids in enumerate(ids):
                entries = [
                    (i, acts[index][r][: kind.width(lengths[i])])
                    for r, i in enumerate(node_ids)
                    if i >= 0
                ]
                best = scores[index] if entries else 0.0
                chosen = [(i, rows[index]) for i, rows in randoms] if randoms else []
                yield NodeResult(kind_name, kind.dst, layer, index, best, entries, chosen)

    def _sample(self, random_batch: dict[int, list[int]]) -> dict:
        """(kind, layer) -> [(sequence id, activations of every node)] for the random sample."""
        if not random_batch:
            return {}
        ids = list(random_batch)
        out: dict = {}
        for kind, layer, activations, _ in self._layers([random_batch[i] for i in ids]):
            rows = activations.tolist()  # [sample][nodes][width]
            out[(kind.name, layer)] = [
                (i, [node[: kind.width(len(random_batch[i]))] for node in rows[row]])
                for row, i in enumerate(ids)
            ]
        return out

"""Top-k digests (worker.engine.digests): a kept sparse tensor reads as the dense one, bit for bit;
a batch's node table frees its dense DSTs as it ranks them and answers exactly as with them."""

from __future__ import annotations

import json

import pytest
import torch

from tests.shared_dir import GOLDEN

engine = pytest.importorskip("worker.engine")
digests = pytest.importorskip("worker.engine.digests")

PROMPT = "Paris is the capital of France, and Berlin is the capital of Germany."


def _bits(t: torch.Tensor) -> list[int]:
    return t.reshape(-1).view(torch.int32).tolist()


def _sparse(shape=(5, 7, 40)) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    t = torch.randn(shape, generator=g)
    t = torch.where(torch.rand(shape, generator=g) < 0.05, t, torch.zeros(()))
    t[0, 0, 0], t[1, 2, 3], t[4, 6, 39] = -0.0, float("nan"), float("-inf")
    t[2, 2, 2] = 1e-45  # a subnormal
    return t


def test_kept_values_read_as_the_dense_tensor_bit_for_bit():
    dense = _sparse()
    kept = digests.kept(dense)
    assert isinstance(kept, digests.KeptValues)
    assert kept.nbytes < dense.numel() * dense.element_size() / 3
    every = torch.cartesian_prod(*(torch.arange(n) for n in dense.shape)).T
    index = tuple(every)
    assert _bits(kept[index]) == _bits(dense[index])
    assert _bits(kept.dense()) == _bits(dense)
    order = torch.randperm(every.shape[1], generator=torch.Generator().manual_seed(0))[:50]
    index = tuple(every[:, order])  # any order, repeats included
    index = tuple(torch.cat([axis, axis[:5]]) for axis in index)
    assert _bits(kept[index]) == _bits(dense[index])
    assert kept[(torch.tensor([1]), torch.tensor([2]))].shape == dense[1:2, 2].shape  # partial
    for bad in [(torch.tensor([5]), torch.tensor([0]), torch.tensor([0]))]:
        with pytest.raises(IndexError, match="out of bounds for dimension 0 with size 5"):
            kept[bad]
    assert _bits(kept[(torch.tensor([-1]),) * 3]) == _bits(dense[(torch.tensor([-1]),) * 3])


def test_dense_and_empty_tensors_are_kept_as_they_are_or_read_as_zeros():
    dense = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    assert digests.kept(dense) is dense
    zeros = digests.kept(torch.zeros(4, 30))
    assert isinstance(zeros, digests.KeptValues) and zeros.indices.numel() == 0
    assert _bits(zeros[(torch.tensor([3, 0]), torch.tensor([29, 1]))]) == [0, 0]
    ints = torch.zeros(4, 30, dtype=torch.long)
    assert digests.kept(ints) is ints


def _latent_pair() -> dict:
    base = {
        "prompt": PROMPT,
        "targetTokens": [" Germany"],
        "distractorTokens": [" France"],
        "componentTypeForMlp": "autoencoder_latent",
        "componentTypeForAttention": "autoencoder_latent",
        "topAndBottomKForNodeTable": 10,
        "hideEarlyLayersWhenAblating": False,
    }
    ablation = {
        "nodeIndex": {
            "nodeType": "mlp_autoencoder_latent",
            "tensorIndices": [3, 126],
            "layerIndex": 1,
            "passType": "forward",
        },
        "value": 0.0,
    }
    return {"subRequests": [dict(base, nodeAblations=[ablation]), dict(base, nodeAblations=[])]}


@pytest.fixture(scope="module")
def both(golden_model_dir):
    return engine.load_model(
        str(golden_model_dir),
        "cpu",
        mlp_autoencoder=str(GOLDEN / "autoencoders" / "ae-mlp-post-act-tiny"),
        attention_autoencoder=str(GOLDEN / "autoencoders" / "ae-resid-delta-attn-tiny"),
    )


def _without_timing(answer: dict) -> str:
    for sub in answer["inferenceSubResponses"]:
        data = sub["inferenceResponse"]["inferenceAndTokenData"]
        for key in ("inferenceTime", "memoryUsedBefore", "memoryUsedAfter"):
            data.pop(key)
    return json.dumps(answer)


def test_the_node_table_frees_its_dense_dsts_and_answers_as_with_them(both, monkeypatch):
    from worker.engine import groups, routes

    route = routes.prepare("batched_tdb", _latent_pair(), both)
    group = groups._plan_group(0, route.subs, route.paths, both)
    (digested,) = groups.answer_pack([group], both)
    for plan in group.plans:
        assert plan.stores == {}  # every store was read by top-k specs only: all released
        table = plan.top_k["topKComponents"].groups
        latent = [d for dsts in table.values() for d in dsts if "autoencoder" in d.node_type]
        assert len(latent) == 8  # 4 groups x (MLP, attention)
        assert all(isinstance(t, digests.KeptValues) for d in latent for t in d.forward.values())

    # the same batch with every DST kept dense until its response is written (the former way)
    monkeypatch.setattr(digests, "kept", lambda tensor, hint=None: tensor)
    monkeypatch.setattr(groups, "store_uses", lambda plan: None)
    group = groups._plan_group(0, route.subs, route.paths, both)
    (dense,) = groups.answer_pack([group], both)
    assert all(plan.stores for plan in group.plans)
    assert _without_timing(digested) == _without_timing(dense)


def test_a_hint_is_used_only_when_it_holds_every_entry():
    dense = _sparse()
    full = digests.kept(dense)
    every = tuple(torch.cartesian_prod(*(torch.arange(n) for n in dense.shape)).T)
    wider = torch.cat([full.indices, torch.tensor([7, 100, 1000])]).sort().values
    hinted = digests.kept(dense, wider)
    assert hinted.indices is wider and _bits(hinted[every]) == _bits(dense[every])
    missing = digests.kept(dense, full.indices[1:])  # one entry left out: scanned instead
    assert torch.equal(missing.indices, full.indices)
    assert _bits(missing[every]) == _bits(dense[every])


def test_half_precision_tensors_keep_their_bits():
    dense = _sparse().to(torch.bfloat16)
    kept = digests.kept(dense)
    every = tuple(torch.cartesian_prod(*(torch.arange(n) for n in dense.shape)).T)
    assert kept[every].dtype == torch.bfloat16
    assert kept[every].view(torch.int16).tolist() == dense[every].view(torch.int16).tolist()

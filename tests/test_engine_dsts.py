"""Every derived scalar the engine computes agrees with the shared table of derived scalars
(models.wire.enums.DST_INFO, from protocol.md Appendix A): its layers, its shape, its node type and
whether it has a backward variant. The API checks requests against that table, so the two must
not drift apart."""

from __future__ import annotations

import pytest

from models.wire import protocol as p
from models.wire.enums import DerivedScalarType
from models.wire.shapes import DST_INFO
from tests import engine_helpers as helpers
from worker.engine.derived import DSTS
from worker.engine.inference import run_pass
from worker.engine.planning import Paths, plan_sub_request
from worker.engine.view import ElementView

golden = helpers.golden  # module-scoped fixture

PROMPT = "When Mary and John went to the store"
FLATTENED = {
    "attn_write_norm",
    "flattened_attn_post_softmax",
    "attn_act_times_grad",
    "attn_write_to_final_residual_grad",
}


def axis_size(dim: str, model, t: int) -> int:
    meta = model.meta
    return {
        "sequence_tokens": t,
        "attended_to_sequence_tokens": t,
        "residual_stream_channels": meta.d_model,
        "vocab_size": meta.vocab_size,
        "attn_heads": meta.n_heads,
        "query_and_key_channels": meta.d_head,
        "value_channels": meta.d_head,
        "mlp_acts": meta.d_mlp,
        "singleton": 1,
    }[dim]


@pytest.fixture(scope="module")
def views(golden):
    """One pass that saves everything the engine's DSTs read, traced from an MLP neuron and, for
    the loss-driven directions, a loss; plus a view per sub-request."""
    loss = {"name": "logit_diff", "targetTokens": [" Mary"], "distractorTokens": [" John"]}
    trace = {
        "nodeIndex": {
            "nodeType": "mlp_neuron",
            "tensorIndices": [3, 5],
            "layerIndex": 2,
            "passType": "forward",
        },
        "preOrPostAct": "pre",
        "detachLayerNormScale": True,
    }
    ablation = {
        "index": {
            "activationLocationType": "mlp.post_act",
            "tensorIndices": ["All", 5],
            "layerIndex": 1,
            "passType": "forward",
        },
        "value": 1.0,
    }
    subs = [
        p.InferenceSubRequest.model_validate(
            {
                "inferenceRequestSpec": {
                    "prompt": PROMPT,
                    "lossFnConfig": loss,
                    "ablationSpecs": [ablation],
                },
                "processingRequestSpecByName": {},
            }
        ),
        p.InferenceSubRequest.model_validate(
            {
                "inferenceRequestSpec": {"prompt": PROMPT, "traceConfig": trace},
                "processingRequestSpecByName": {},
            }
        ),
    ]
    plans = [plan_sub_request(sub, Paths.batched(i, {}), golden) for i, sub in enumerate(subs)]
    n = golden.meta.n_layers
    from worker.engine.hooks import HOOK_POINTS

    keys = {
        (name, layer)
        for name, (_, layered) in HOOK_POINTS.items()
        for layer in (range(n) if layered else [None])
    }
    result = run_pass(golden.weights, [pl.element for pl in plans], keys, keys, True, golden.device)
    return [
        ElementView(
            golden.weights, result.hooks, row, result.lengths[row], pl.dst_trace, pl.fake_grad_index
        )
        for row, pl in enumerate(plans)
    ]


@pytest.mark.parametrize("name", sorted(DSTS))
def test_engine_dst_matches_the_shared_table(golden, views, name):
    info = DST_INFO[DerivedScalarType(name)]
    definition = DSTS[name]
    assert definition.layered == (not info.has_no_layers)
    assert (definition.backward is not None) == info.supports_backward
    view = views[1] if definition.activation_direction else views[0]
    layer = 1 if definition.layered else None
    tensor = definition.forward(view, layer)
    t = view.T
    expected = [axis_size(d.value, golden, t) for d in info.dims]
    if (
        name in FLATTENED
    ):  # the pair axis keeps the name sequence_tokens (TDB quirk, engine.md §3.4)
        expected[0] = t * (t + 1) // 2
    assert list(tensor.shape) == expected
    if definition.backward is not None:
        assert list(definition.backward(view, layer).shape) == expected


def test_the_engine_offers_every_dst_of_the_table_but_autoencoder_and_edge_ones(golden):
    missing = {d.value for d, info in DST_INFO.items() if not info.autoencoder} - set(DSTS)
    assert all("edge" in m or "single_node" in m or "single_subnode" in m for m in missing), missing

"""Shared passes (worker/engine/groups.py): independent groups packed into one padded pass are each
answered byte for byte as alone, on every golden case, in mixed packs of every size.

The timing and memory fields describe the pass that computed a response, so they are the only
fields left out of the comparison.
"""

from __future__ import annotations

import random

import pytest

from models.errors import ActqError
from models.wire.encoding import dumps
from tests import engine_helpers as helpers
from tests.conftest import ALL_GOLDEN_CASES, GOLDEN_DIR, TIMING_FIELDS
from tests.engine_helpers import ds, inference_spec, logit_diff, mtk, sub_request
from worker.engine import load_model, run, run_many
from worker.engine.groups import packs, run_groups, settle_groups
from worker.engine.pipeline import run_batch

golden = helpers.golden

NODE_TABLE = {"act_times_grad": ["mlp_act_times_grad", "unflattened_attn_act_times_grad"]}


def _stripped(value):
    if isinstance(value, dict):
        return {k: None if k in TIMING_FIELDS else _stripped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stripped(v) for v in value]
    return value


def _stored(outcome) -> str:
    """What the worker would store: the response's JSON text, or the error's fields."""
    if isinstance(outcome, ActqError):
        return dumps({"type": outcome.type, "message": outcome.message, "path": outcome.path})
    return dumps(_stripped(outcome))


def _server_options(case: dict) -> dict:
    names = case.get("server") or {}
    options = {}
    for key, option in (
        ("mlpAutoencoder", "mlp_autoencoder"),
        ("attentionAutoencoder", "attention_autoencoder"),
    ):
        if names.get(key):
            options[option] = f"{names[key]}={GOLDEN_DIR / 'autoencoders' / names[key]}"
    return options


def _servers() -> dict[tuple, list[dict]]:
    """The golden cases by the autoencoders their server had loaded."""
    by_server: dict[tuple, list[dict]] = {}
    for case in ALL_GOLDEN_CASES:
        by_server.setdefault(tuple(sorted(_server_options(case).items())), []).append(case)
    return by_server


SERVERS = _servers()


@pytest.mark.parametrize(
    "server", list(SERVERS), ids=lambda s: "+".join(k for k, _ in s) or "plain"
)
def test_every_golden_case_is_byte_identical_alone_and_in_mixed_packs(server):
    cases = SERVERS[server]
    model = load_model(str(GOLDEN_DIR / "oracle-gpt2-tiny"), "cpu", **dict(server))
    requests = [(case["endpoint"], case["request"]) for case in cases]
    alone = [_stored(run_many([request], model)[0]) for request in requests]
    assert any('"inferenceAndTokenData"' in text for text in alone) or server == (), "no answers"
    for trial, max_rows in enumerate([None, 3, 7]):
        order = list(range(len(requests)))
        random.Random(trial).shuffle(order)
        together = run_many([requests[i] for i in order], model, max_rows_per_pass=max_rows)
        for position, i in enumerate(order):
            assert _stored(together[position]) == alone[i], (
                f"{cases[i]['name']} differs in a pack (trial {trial}, max rows {max_rows})"
            )


def test_run_many_alone_is_the_engine_run(golden):
    case = next(c for c in ALL_GOLDEN_CASES if c["endpoint"] == "batched_tdb" and c["response"])
    (outcome,) = run_many([(case["endpoint"], case["request"])], golden)
    assert _stored(outcome) == _stored(run(case["endpoint"], case["request"], golden))


LOSS = logit_diff([" and"], [" the"])


def _group(prompts: list[str], spec: dict | None = None) -> list:
    from models.wire import protocol as p

    spec = spec or mtk(NODE_TABLE, k=4)
    batch = {
        "inferenceSubRequests": [
            sub_request(inference_spec(prompt, loss=LOSS), {"table": spec}) for prompt in prompts
        ]
    }
    return list(p.parse_request("batched", batch).inference_sub_requests)


def _table(answer: dict, sub: int = 0) -> dict:
    return answer["inferenceSubResponses"][sub]["processingResponseDataByName"]["table"]


def _loss(answer: dict, sub: int) -> float:
    return answer["inferenceSubResponses"][sub]["inferenceResponse"]["inferenceAndTokenData"][
        "loss"
    ]


def test_top_k_unions_stay_within_each_group(golden):
    """Two batches with the same spec name: each unions its own sub-requests' nodes only."""
    first = _group(["The cat sat on the mat", "A dog ran in the park"])
    second = _group(["Colorless green ideas sleep furiously tonight, said the linguist"])
    together = run_groups([first, second], golden)
    for group, shared in zip([first, second], together, strict=True):
        assert dumps(_same_timing(run_batch(group, golden), shared)) == dumps(shared)
    assert _table(together[0])["nodeIndices"] != _table(together[1])["nodeIndices"]
    assert _table(together[0], 0)["nodeIndices"] == _table(together[0], 1)["nodeIndices"]


def test_a_short_prompt_reads_its_own_batchs_padding_not_the_packs(golden):
    """TDB's loss reads position -1 of the padded sequence: of the row's own batch."""
    spec = ds("mlp_act_times_grad", 1, 3)
    first = _group(["The cat sat", "The cat sat on the mat and then"], spec)
    second = _group(["A dog ran in the park because it was a sunny day for all of us"], spec)
    alone = run_batch(first, golden)
    shared = run_groups([first, second], golden)[0]
    assert dumps(_same_timing(alone, shared)) == dumps(shared)
    solo_short = run_batch(first[:1], golden)  # unpadded: its own last token
    assert _loss(solo_short, 0) != _loss(alone, 0)


def _same_timing(alone: dict, shared: dict) -> dict:
    """``alone`` with the timing fields of ``shared`` (they describe the pass, not the answer)."""
    for a, s in zip(alone["inferenceSubResponses"], shared["inferenceSubResponses"], strict=True):
        a_data = a["inferenceResponse"]["inferenceAndTokenData"]
        s_data = s["inferenceResponse"]["inferenceAndTokenData"]
        for name in TIMING_FIELDS:
            a_data[name] = s_data[name]
    return alone


def _pass_times(answer: dict) -> set[float]:
    return {
        s["inferenceResponse"]["inferenceAndTokenData"]["inferenceTime"]
        for s in answer["inferenceSubResponses"]
    }


def test_groups_share_passes_of_at_most_the_row_budget(golden):
    groups = [_group(["The cat sat"]), _group(["A dog ran", "A cat sat"]), _group(["Hi there"] * 3)]
    one_pass = run_groups(groups, golden)
    assert len(set().union(*map(_pass_times, one_pass))) == 1  # one forward+backward for all
    split = run_groups(groups, golden, max_rows_per_pass=3)
    times = [_pass_times(answer) for answer in split]
    assert times[0] == times[1] and times[1] != times[2]  # [1 + 2 rows], [3 rows]
    # the packing itself: whole groups, in order, a group bigger than the budget alone
    lengths = [[len(g.plans) for g in pack] for pack in packs(_planned(groups, golden), golden, 2)]
    assert lengths == [[1], [2], [3]]


def _planned(groups, model):
    from worker.engine.groups import _plan_group, default_paths

    return [_plan_group(i, g, default_paths(g), model) for i, g in enumerate(groups)]


def test_a_refused_group_gets_its_error_and_the_others_their_answers(golden):
    good = _group(["The cat sat"])
    bad = _group(["x " * 200])  # longer than the model's context
    outcomes = settle_groups([good, bad, good], golden)
    assert isinstance(outcomes[1], ActqError)
    assert outcomes[1].path == "inferenceSubRequests.0.inferenceRequestSpec.prompt"
    assert _stored(outcomes[0]) == _stored(outcomes[2]) == _stored(run_batch(good, golden))
    with pytest.raises(ActqError):
        run_groups([good, bad], golden)

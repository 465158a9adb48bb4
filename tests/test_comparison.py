"""``api.comparison`` on TDB's own stored responses (golden cases).

Every expected number is recomputed here from the raw response JSON (values read by node index,
deltas as ``b - a``, ranks by sorting the raw logits, per-token sums by summing the raw rows),
never taken from the function under test.
"""

from __future__ import annotations

import json

import pytest

from api.comparison import clean_twin, compare, run_side
from tests.conftest import GOLDEN_DIR

MODEL = "oracle-gpt2-tiny"


def case(name: str) -> dict:
    return json.loads(next((GOLDEN_DIR / "cases").glob(f"{name}-*.json")).read_text())


PAIR = case("061")
PLAIN = case("048")  # the same clean prompt as PAIR's run 0, top-k 4, its own job


def side(c: dict, index: int = 0, address: str | None = None, model: str = MODEL):
    address = address or f"{c['endpoint']}-{index}/0"
    return run_side(address, c["endpoint"], model, None, c["request"], c["response"], index)


def sub(c: dict, index: int) -> dict:
    return c["response"]["inferenceSubResponses"][index]


def data(c: dict, index: int, name: str) -> dict:
    return sub(c, index)["processingResponseDataByName"][name]


def loss(c: dict, index: int) -> float:
    return sub(c, index)["inferenceResponse"]["inferenceAndTokenData"]["loss"]


def raw_nodes(c: dict, index: int, name: str = "topKComponents") -> dict[str, dict]:
    d = data(c, index, name)
    return {
        json.dumps(node, sort_keys=True): {g: v[i] for g, v in d["activationsByGroupId"].items()}
        for i, node in enumerate(d["nodeIndices"])
    }


def rows_by_key(table: dict) -> dict[str, dict]:
    return {json.dumps(r["node"], sort_keys=True): r for r in table["rows"]}


# --- the golden clean + ablated pair --------------------------------------------------------


def test_settings_side_by_side_say_that_only_the_ablations_differ():
    result = compare(side(PAIR, 0), side(PAIR, 1))
    assert result["differs"] == ["ablations"]
    rows = {r["name"]: r for r in result["settings"]}
    assert rows["ablations"]["a"] == []
    assert rows["ablations"]["b"] == PAIR["request"]["subRequests"][1]["nodeAblations"]
    assert rows["prompt"]["same"] and rows["targetTokens"]["a"] == [" Germany"]
    assert result["tokens"]["same"] and result["tokens"]["differingPositions"] == []
    assert result["notes"] == []


def test_loss_of_each_run_and_its_change():
    result = compare(side(PAIR, 0), side(PAIR, 1))
    assert result["loss"] == {
        "a": loss(PAIR, 0),
        "b": loss(PAIR, 1),
        "delta": loss(PAIR, 1) - loss(PAIR, 0),
    }
    assert result["tracedValue"] == {"a": None, "b": None, "delta": None}


def test_node_table_values_and_deltas_match_both_responses():
    (table,) = compare(side(PAIR, 0), side(PAIR, 1))["nodeTables"]
    a, b = raw_nodes(PAIR, 0), raw_nodes(PAIR, 1)
    assert table["name"] == "topKComponents"
    assert set(table["groups"]) == {"write_norm", "act_times_grad", "direction_write", "activation"}
    rows = rows_by_key(table)
    assert set(rows) == set(a) == set(b)  # one batch: TDB unioned the node lists
    for key, row in rows.items():
        assert row["inA"] and row["inB"]
        for group in table["groups"]:
            expected = {
                "a": a[key][group],
                "b": b[key][group],
                "delta": b[key][group] - a[key][group],
            }
            assert row["values"][group] == expected


def test_node_rows_are_sorted_by_the_largest_absolute_delta():
    a, b = raw_nodes(PAIR, 0), raw_nodes(PAIR, 1)
    (table,) = compare(side(PAIR, 0), side(PAIR, 1))["nodeTables"]
    biggest = [
        max(abs(b[k][g] - a[k][g]) for g in a[k])
        for k in map(lambda r: json.dumps(r["node"], sort_keys=True), table["rows"])
    ]
    assert biggest == sorted(biggest, reverse=True)
    assert biggest[0] == max(max(abs(b[k][g] - a[k][g]) for g in a[k]) for k in a)
    (by_group,) = compare(side(PAIR, 0), side(PAIR, 1), sort="act_times_grad")["nodeTables"]
    keys = [json.dumps(r["node"], sort_keys=True) for r in by_group["rows"]]
    deltas = [abs(b[k]["act_times_grad"] - a[k]["act_times_grad"]) for k in keys]
    assert deltas == sorted(deltas, reverse=True)


def test_top_output_tokens_with_ranks_recomputed_from_the_raw_logits():
    result = compare(side(PAIR, 0), side(PAIR, 1))["topOutputTokens"]
    assert result["alignedBy"] == "token id" and result["positions"] == {"a": [-1], "b": [-1]}
    ranks, logits = [], []
    for index in (0, 1):
        d = data(PAIR, index, "topOutputTokenLogits")
        values = d["activationsByGroupId"]["logits"]
        ordered = sorted(values, reverse=True)
        ids = [n["tensorIndices"][1] for n in d["nodeIndices"]]
        logits.append(dict(zip(ids, values, strict=True)))
        ranks.append(
            {
                i: ordered.index(v) + 1
                for i, v in zip(ids, values, strict=True)
                if ordered.index(v) < 100
            }
        )
    expected_ids = set(ranks[0]) | set(ranks[1])
    assert {r["tokenId"] for r in result["rows"]} == expected_ids
    for row in result["rows"]:
        i = row["tokenId"]
        assert row["rank"] == {"a": ranks[0].get(i), "b": ranks[1].get(i)}
        assert row["logit"] == {
            "a": logits[0][i],
            "b": logits[1][i],
            "delta": logits[1][i] - logits[0][i],
        }
    first = result["rows"][0]
    assert first["rank"]["a"] == 1 or first["rank"]["b"] == 1
    d = data(PAIR, 0, "topOutputTokenLogits")
    top = max(range(len(d["nodeIndices"])), key=lambda i: d["activationsByGroupId"]["logits"][i])
    assert result["rows"][0]["token"] == d["vocabTokenStringsForIndices"][top]


def test_per_token_sums_side_by_side():
    result = compare(side(PAIR, 0), side(PAIR, 1))["tokenSums"]
    sums = [
        data(PAIR, i, "componentSumsForTokenDisplay")["intermediateSumActivationsByDstByGroupId"]
        for i in (0, 1)
    ]
    expected_columns = {(g, d) for g in sums[0] for d in sums[0][g]}
    assert {(c["group"], c["dst"]) for c in result["columns"]} == expected_columns
    tokens = sub(PAIR, 0)["inferenceResponse"]["inferenceAndTokenData"]["tokensAsStrings"]
    assert [r["tokenA"] for r in result["rows"]] == tokens
    for j, column in enumerate(result["columns"]):
        raw = [s[column["group"]][column["dst"]] for s in sums]
        per_token = [
            t["value"] if t["tensorType"] == "tensor_1d" else [sum(row) for row in t["value"]]
            for t in raw
        ]
        assert column["summedOverAttendedTo"] == (raw[0]["tensorType"] == "tensor_2d")
        for t, row in enumerate(result["rows"]):
            assert row["cells"][j] == {
                "a": per_token[0][t],
                "b": per_token[1][t],
                "delta": per_token[1][t] - per_token[0][t],
            }


def test_only_diff_keeps_what_changed():
    full = compare(side(PAIR, 0), side(PAIR, 1))
    result = compare(side(PAIR, 0), side(PAIR, 1), only_diff=True)
    assert [s["name"] for s in result["settings"]] == ["ablations"]
    (table,) = result["nodeTables"]
    a, b = raw_nodes(PAIR, 0), raw_nodes(PAIR, 1)
    changed = {k for k in a if any(a[k][g] != b[k][g] for g in a[k])}
    assert set(rows_by_key(table)) == changed and changed != set(a)
    kept = {r["tokenId"] for r in result["topOutputTokens"]["rows"]}
    assert kept == {
        r["tokenId"]
        for r in full["topOutputTokens"]["rows"]
        if r["logit"]["delta"] != 0 or r["rank"]["a"] != r["rank"]["b"]
    }
    for row in result["tokenSums"]["rows"]:
        assert any(c["delta"] != 0 for c in row["cells"])


# --- runs of different jobs, prompts, models, endpoints -------------------------------------


def test_a_node_missing_from_one_runs_top_k_is_absent_not_zero():
    """PLAIN (top-k 4) and PAIR's clean run (top-k 2): two jobs, two node lists."""
    result = compare(side(PLAIN, 0), side(PAIR, 0))
    assert result["differs"] == ["topAndBottomKForNodeTable"]
    assert result["loss"]["delta"] == loss(PAIR, 0) - loss(PLAIN, 0)
    (table,) = result["nodeTables"]
    a, b = raw_nodes(PLAIN, 0), raw_nodes(PAIR, 0)
    only_a = set(a) - set(b)
    assert only_a and table["counts"] == {
        "both": len(set(a) & set(b)),
        "onlyA": len(only_a),
        "onlyB": len(set(b) - set(a)),
    }
    rows = rows_by_key(table)
    assert set(rows) == set(a) | set(b)
    for key in only_a:
        row = rows[key]
        assert (row["inA"], row["inB"]) == (True, False)
        for group, c in row["values"].items():
            assert c == {"a": a[key][group], "b": None, "delta": None}
    for key in set(a) & set(b):
        for group, c in rows[key]["values"].items():
            assert c == {
                "a": a[key][group],
                "b": b[key][group],
                "delta": b[key][group] - a[key][group],
            }
    with_delta = [r for r in table["rows"] if r["maxAbsDelta"] is not None]
    assert table["rows"][: len(with_delta)] == with_delta  # one-sided rows come last


def test_different_prompts_are_aligned_by_position_and_said_so():
    other = case("053")  # another prompt, another length
    result = compare(side(PAIR, 0), side(other, 0))
    assert "prompt" in result["differs"]
    ta = sub(PAIR, 0)["inferenceResponse"]["inferenceAndTokenData"]["tokensAsStrings"]
    tb = sub(other, 0)["inferenceResponse"]["inferenceAndTokenData"]["tokensAsStrings"]
    assert result["tokens"]["differingPositions"] == [
        t for t in range(max(len(ta), len(tb))) if ta[t : t + 1] != tb[t : t + 1]
    ]
    assert any("prompts differ at token positions" in n for n in result["notes"])
    if len(ta) != len(tb):
        assert any(f"a has {len(ta)} tokens and b has {len(tb)}" in n for n in result["notes"])
    assert result["nodeTables"] and result["tokenSums"]["rows"]


def test_different_models_do_not_align_nodes():
    result = compare(side(PAIR, 0), side(PAIR, 1, model="other-model"))
    assert result["nodeTables"] == []
    assert any("node tables are not aligned" in n for n in result["notes"])
    assert result["topOutputTokens"]["alignedBy"] == "token string"
    assert result["loss"]["delta"] == loss(PAIR, 1) - loss(PAIR, 0)
    assert "model" in result["differs"]


def test_a_run_without_a_result_still_compares_its_settings():
    pending = run_side("J/0", "batched_tdb", MODEL, None, PAIR["request"], None, 1, status="queued")
    result = compare(side(PAIR, 0), pending)
    assert result["differs"] == ["ablations"]
    assert result["loss"] == {"a": loss(PAIR, 0), "b": None, "delta": None}
    assert result["notes"] == ["b (J/0) has no result: its job is queued."]
    assert result["nodeTables"] == [] and result["topOutputTokens"] is None


def test_traced_runs_compare_the_traced_value():
    traced = case("055")
    result = compare(side(traced, 0), side(traced, 0))
    value = sub(traced, 0)["inferenceResponse"]["inferenceAndTokenData"][
        "activationValueForBackwardPass"
    ]
    assert result["tracedValue"] == {"a": value, "b": value, "delta": 0.0}
    position = traced["request"]["subRequests"][0]["upstreamNodeToTrace"]["nodeIndex"][
        "tensorIndices"
    ][0]
    assert result["topOutputTokens"]["positions"]["a"] == [position]


def test_batched_runs_compare_their_top_k_specs_and_name_what_is_not_compared():
    batched = case("043")
    result = compare(side(batched, 0), side(batched, 1))
    assert [t["name"] for t in result["nodeTables"]] == ["topK"]
    a, b = raw_nodes(batched, 0, "topK"), raw_nodes(batched, 1, "topK")
    for key, row in rows_by_key(result["nodeTables"][0]).items():
        for group, c in row["values"].items():
            assert c["delta"] == b[key][group] - a[key][group]
    assert {n["name"] for n in result["notCompared"]} == {"upvoted", "inputMlp"}
    assert result["topOutputTokens"] is None and result["tokenSums"] is None


@pytest.mark.parametrize("name", ["002", "005"])
def test_derived_scalars_compare_as_a_one_group_node_table(name):
    c = case(name)
    other = case("005")
    result = compare(side(c), side(other))
    (table,) = result["nodeTables"]
    assert table["name"] == "derivedScalars" and table["groups"] == ["activation"]
    a, b = (
        c["response"]["derivedScalarsResponseData"],
        other["response"]["derivedScalarsResponseData"],
    )
    values_a = {
        json.dumps(n, sort_keys=True): v
        for n, v in zip(a["nodeIndices"], a["activations"], strict=True)
    }
    values_b = {
        json.dumps(n, sort_keys=True): v
        for n, v in zip(b["nodeIndices"], b["activations"], strict=True)
    }
    for key, row in rows_by_key(table).items():
        assert row["values"]["activation"]["a"] == values_a.get(key)
        assert row["values"]["activation"]["b"] == values_b.get(key)


def test_other_endpoints_compare_what_exists_and_say_what_is_not_comparable():
    attention = case("021")
    result = compare(side(PAIR, 0), side(attention))
    assert result["nodeTables"] == []
    assert any(
        "batched_tdb run and b a derived_attention_scalars run" in n for n in result["notes"]
    )
    names = {n["name"]: n["reason"] for n in result["notCompared"]}
    assert (
        names["topKComponents"] == "only in a" and names["derivedAttentionScalars"] == "only in b"
    )
    same = compare(side(attention), side(attention))
    assert same["notCompared"] == [
        {
            "name": "derivedAttentionScalars",
            "reason": "per-token attention scalars are not compared",
        }
    ]


# --- clean twins ----------------------------------------------------------------------------


def test_clean_twin_is_the_run_alone_without_ablations():
    twin = clean_twin("batched_tdb", PAIR["request"], 1)
    expected = dict(PAIR["request"]["subRequests"][1], nodeAblations=None)
    assert twin == {"subRequests": [expected]}
    assert PAIR["request"]["subRequests"][1]["nodeAblations"]  # the stored request is untouched
    mtk = case("034")
    twin = clean_twin("multiple_top_k_derived_scalars", mtk["request"], 0)
    assert twin["inferenceRequestSpec"]["ablationSpecs"] is None
    assert (
        twin["multipleTopKDerivedScalarsRequestSpec"]
        == mtk["request"]["multipleTopKDerivedScalarsRequestSpec"]
    )
    batched = case("043")
    twin = clean_twin("batched", batched["request"], 1)
    assert (
        twin["inferenceSubRequests"][0]["processingRequestSpecByName"]
        == batched["request"]["inferenceSubRequests"][1]["processingRequestSpecByName"]
    )


def test_latent_nodes_are_named_readably():
    from api.comparison_tables import node_label

    tokens = ["Paris"] + [" x"] * 13 + [" France"]
    node = {"nodeType": "mlp_autoencoder_latent", "tensorIndices": [14, 126], "layerIndex": 1}
    assert node_label(node, tokens) == "MLP-AE L1 #126 @14 ' France'"
    node = {"nodeType": "attention_autoencoder_latent", "tensorIndices": [0, 3], "layerIndex": 2}
    assert node_label(node, tokens) == "attn-AE L2 #3 @0 'Paris'"


def test_runs_served_with_other_autoencoders_differ_in_autoencoders():
    from api.comparison import RunSide, compare

    request = {"prompt": "Hi", "targetTokens": [" a"], "distractorTokens": [" b"]}
    aes = {"mlp": {"name": "ae-mlp", "contentHash": "1" * 64}, "attention": None}
    plain = RunSide("A/0", "batched_tdb", "m", request=request)
    with_ae = RunSide("B/0", "batched_tdb", "m", request=request, autoencoders=aes)
    other = {"mlp": {"name": "ae-mlp", "contentHash": "2" * 64}, "attention": None}
    assert "autoencoders" in compare(plain, with_ae)["differs"]
    assert (
        "autoencoders"
        in compare(
            with_ae, RunSide("C/0", "batched_tdb", "m", request=request, autoencoders=other)
        )["differs"]
    )
    assert "autoencoders" not in compare(with_ae, with_ae)["differs"]
    assert "autoencoders" not in compare(plain, plain)["differs"]

"""Early validation against the golden model: one test per rule, and the golden cases."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from models.checks import validate_request
from models.checks.inference import excluded_token_count
from models.errors import (
    ActqError,
    NotFoundError,
    RequestError,
    RequestValidationError,
    UnsupportedError,
)
from models.model_meta import resolve_model
from models.tokenizer import load_tokenizer
from models.wire.protocol import parse_request
from tests.conftest import needs_autoencoders


def shared_dir() -> Path:
    env = os.environ.get("ACTQ_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


GOLDEN = shared_dir() / "golden"
CASES = [
    (f.stem, json.loads(f.read_text(encoding="utf-8")))
    for f in sorted((GOLDEN / "cases").glob("*.json"))
]


@pytest.fixture(scope="module")
def meta():
    m = resolve_model(str(GOLDEN / "oracle-gpt2-tiny"))
    assert (m.n_layers, m.n_heads, m.d_model, m.d_head, m.d_mlp, m.n_ctx, m.vocab_size) == (
        3, 4, 64, 16, 256, 64, 50257,
    )  # fmt: skip
    return m


@pytest.fixture(scope="module")
def tokenizer(meta):
    return load_tokenizer(meta)


@pytest.fixture
def check(meta, tokenizer):
    """Parse and validate; returns the error raised, or None."""

    def run(endpoint: str, body: dict) -> ActqError | None:
        request = parse_request(endpoint, body)
        try:
            validate_request(endpoint, request, meta, tokenizer)
        except ActqError as error:
            return error
        return None

    return run


# -- request builders ------------------------------------------------------------------------

PROMPT = "Hello world!"  # 3 tokens: 'Hello', ' world', '!'


def node(tensor_indices, node_type="mlp_neuron", layer_index=0, pass_type="forward") -> dict:
    return {
        "nodeType": node_type,
        "tensorIndices": tensor_indices,
        "layerIndex": layer_index,
        "passType": pass_type,
    }


def tdb(**changes) -> dict:
    sub = {
        "prompt": PROMPT,
        "targetTokens": ["."],
        "distractorTokens": ["!"],
        "componentTypeForMlp": "neuron",
        "componentTypeForAttention": "attention_head",
        "topAndBottomKForNodeTable": 2,
        "hideEarlyLayersWhenAblating": False,
    }
    sub.update(changes)
    return {"subRequests": [sub]}


def ds(inference=None, **spec) -> dict:
    body_spec = {"dst": "mlp_post_act", "layerIndex": 0, "activationIndex": 3}
    body_spec.update(spec)
    return {
        "inferenceRequestSpec": {"prompt": PROMPT, **(inference or {})},
        "derivedScalarsRequestSpec": body_spec,
    }


def mtk(inference=None, **spec) -> dict:
    body_spec = {
        "dstListByGroupId": {"write_norm": ["mlp_write_norm", "unflattened_attn_write_norm"]}
    }
    body_spec.update(spec)
    return {
        "inferenceRequestSpec": {"prompt": PROMPT, **(inference or {})},
        "multipleTopKDerivedScalarsRequestSpec": body_spec,
    }


def batched(*subs) -> dict:
    return {
        "inferenceSubRequests": [
            {
                "inferenceRequestSpec": {"prompt": prompt, **inference},
                "processingRequestSpecByName": specs,
            }
            for prompt, inference, specs in subs
        ]
    }


def ablation(location, tensor_indices, layer_index=0, pass_type="forward") -> dict:
    return {
        "index": {
            "activationLocationType": location,
            "tensorIndices": tensor_indices,
            "layerIndex": layer_index,
            "passType": pass_type,
        },
        "value": 0.0,
    }


TOP_K = {"dstListByGroupId": {"write_norm": ["mlp_write_norm"]}}
SCORED = {"tokenScoringType": "upvoted_output_tokens", "numTokens": 5, "dependsOnSpecName": "topK"}
LOSS = {"lossFnConfig": {"name": "logit_diff", "targetTokens": ["."], "distractorTokens": ["!"]}}


def assert_error(error, kind, path, status=None, text=None):
    assert type(error) is kind, error
    assert error.path == path
    if status is not None:
        assert error.status == status
    if text is not None:
        assert text in error.message


# -- golden cases ----------------------------------------------------------------------------


# The cases without autoencoders (001-076); the AE cases are checked with their AEs loaded.
REQUEST_CASES = [
    (n, c) for n, c in CASES if c["endpoint"] != "model_info" and not needs_autoencoders(c)
]


@pytest.mark.parametrize(("name", "case"), REQUEST_CASES, ids=[n for n, _ in REQUEST_CASES])
def test_golden_requests_pass_except_the_error_cases(check, name, case):
    error = check(case["endpoint"], case["request"])
    if case.get("error") is None:
        assert error is None
    else:
        assert error is not None and 400 <= error.status < 500


def test_golden_error_cases_give_the_expected_errors(check):
    by_name = {name: case for name, case in CASES}
    layer = check("derived_scalars", by_name["064-err-layer-out-of-range"]["request"])
    assert_error(layer, RequestValidationError, "derivedScalarsRequestSpec.layerIndex", 422)
    target = check("batched_tdb", by_name["066-err-target-not-one-token"]["request"])
    assert_error(target, RequestError, "subRequests.0.targetTokens.0", 400)
    assert target.message == "' elephantine' decoded to [20950, 500]; wanted exactly 1 token"
    long = check("derived_scalars", by_name["068-err-prompt-too-long"]["request"])
    assert_error(
        long, RequestValidationError, "inferenceRequestSpec.prompt", 422, "context window is 64"
    )


# -- batches and prompts ---------------------------------------------------------------------


def test_empty_batches(check):
    assert_error(
        check("batched", {"inferenceSubRequests": []}),
        RequestValidationError,
        "inferenceSubRequests",
    )
    assert_error(check("batched_tdb", {"subRequests": []}), RequestValidationError, "subRequests")


def test_empty_prompt(check):
    assert_error(
        check("batched_tdb", tdb(prompt="")), RequestValidationError, "subRequests.0.prompt"
    )
    body = ds()
    body["inferenceRequestSpec"]["prompt"] = ""
    assert_error(
        check("derived_scalars", body), RequestValidationError, "inferenceRequestSpec.prompt"
    )


def test_top_k_prompt_over_500_tokens_gives_tdbs_400(meta, tokenizer):
    """On a model whose context window is at least TDB's 500 tokens, TDB's own message."""
    import dataclasses

    wide = dataclasses.replace(meta, n_ctx=1024)
    body = tdb()
    body["subRequests"].append({**body["subRequests"][0], "prompt": " a" * 501})
    try:
        validate_request("batched_tdb", parse_request("batched_tdb", body), wide, tokenizer)
    except ActqError as raised:
        error = raised
    else:
        error = None
    assert_error(error, RequestError, "subRequests.1.prompt", 400)
    assert error.message == (
        "Prompts must be less than 500 tokens long for batched top-k requests. "
        "Got these prompt lengths: [3, 501]"
    )


def test_top_k_prompt_over_a_small_context_window_is_told_the_real_limit(check):
    body = tdb()
    body["subRequests"].append({**body["subRequests"][0], "prompt": " a" * 600})
    error = check("batched_tdb", body)
    assert_error(error, RequestValidationError, "subRequests.1.prompt")
    assert (
        error.message == "the prompt has 600 tokens; oracle-gpt2-tiny's context window is 64 tokens"
    )


def test_top_k_prompts_of_unequal_length_give_tdbs_400(check):
    body = tdb()
    body["subRequests"].append({**body["subRequests"][0], "prompt": "Hello"})
    error = check("batched_tdb", body)
    assert_error(error, RequestError, "subRequests.1.prompt", 400)
    assert error.message == (
        "All prompts must have the same length for batched top-k requests. Got these prompts:\n"
        "['Hello', ' world', '!'] (3 tokens)\n, ['Hello'] (1 tokens)\n"
    )


def test_unequal_lengths_without_top_k_are_accepted(check):
    spec = {"d": {"dst": "mlp_post_act", "layerIndex": 0, "activationIndex": 0}}
    assert check("batched", batched((PROMPT, {}, spec), ("Hello", {}, spec))) is None
    error = check("batched", batched((PROMPT, {}, {"t": TOP_K}), ("Hello", {}, {"t": TOP_K})))
    assert_error(error, RequestError, "inferenceSubRequests.1.inferenceRequestSpec.prompt", 400)


# -- TDB node ablations ----------------------------------------------------------------------


def ablate(*nodes) -> dict:
    return tdb(nodeAblations=[{"nodeIndex": n, "value": 0.0} for n in nodes])


ABLATION = "subRequests.0.nodeAblations.0.nodeIndex"


def test_node_ablation_types(check):
    assert check("batched_tdb", ablate(node([1, 5]), node([2, 0, 3], "attention_head"))) is None
    error = check("batched_tdb", ablate(node([0, 0], "layer", None)))
    assert_error(
        error, RequestValidationError, f"{ABLATION}.nodeType", 422, "layer nodes cannot be ablated"
    )
    error = check("batched_tdb", ablate(node([0, 0], "mlp_autoencoder_latent")))
    assert_error(error, UnsupportedError, f"{ABLATION}.nodeType", 422)


def test_node_ablation_null_indices(check):
    assert_error(
        check("batched_tdb", ablate(node([None, 5]))),
        RequestValidationError,
        f"{ABLATION}.tensorIndices.0",
    )
    assert_error(
        check("batched_tdb", ablate(node([1, None]))),
        RequestValidationError,
        f"{ABLATION}.tensorIndices.1",
    )
    assert_error(
        check("batched_tdb", ablate(node([]))), RequestValidationError, f"{ABLATION}.tensorIndices"
    )
    # the key index of an attention node is ignored by TDB, so it may be null
    assert check("batched_tdb", ablate(node([2, None, 3], "attention_head"))) is None


def test_node_ablation_ranges(check):
    assert_error(
        check("batched_tdb", ablate(node([3, 5]))),
        RequestValidationError,
        f"{ABLATION}.tensorIndices.0",
    )
    assert check("batched_tdb", ablate(node([-3, 5]))) is None  # Python-style, as TDB indexes
    assert_error(
        check("batched_tdb", ablate(node([-4, 5]))),
        RequestValidationError,
        f"{ABLATION}.tensorIndices.0",
    )
    assert_error(
        check("batched_tdb", ablate(node([0, 256]))),
        RequestValidationError,
        f"{ABLATION}.tensorIndices.1",
    )
    head = node([0, 0, 4], "attention_head")
    assert_error(
        check("batched_tdb", ablate(head)), RequestValidationError, f"{ABLATION}.tensorIndices.2"
    )
    error = check("batched_tdb", ablate(node([0, 5], layer_index=3)))
    assert_error(error, RequestValidationError, f"{ABLATION}.layerIndex", 422, "has 3 layers")


def test_node_ablation_with_null_layer_means_every_layer(check):
    assert check("batched_tdb", ablate(node([0, 5], layer_index=None))) is None


# -- TDB traces ------------------------------------------------------------------------------


def trace(n, trace_type=None) -> dict:
    return {"nodeIndex": n, "attentionTraceType": trace_type}


UP = "subRequests.0.upstreamNodeToTrace"
DOWN = "subRequests.0.downstreamNodeToTrace"
HEAD = node([2, 1, 0], "attention_head", 1)


def test_downstream_without_upstream(check):
    error = check("batched_tdb", tdb(downstreamNodeToTrace=trace(node([1, 1]))))
    assert_error(error, RequestValidationError, DOWN)


def test_downstream_needs_a_v_upstream(check):
    body = tdb(
        upstreamNodeToTrace=trace(HEAD, "Q"),
        downstreamNodeToTrace=trace(node([2, 1], layer_index=2)),
    )
    assert_error(check("batched_tdb", body), RequestValidationError, DOWN, text="through V")
    body = tdb(
        upstreamNodeToTrace=trace(HEAD, "V"),
        downstreamNodeToTrace=trace(node([2, 1], layer_index=2)),
    )
    assert check("batched_tdb", body) is None


def test_downstream_cannot_be_v(check):
    body = tdb(upstreamNodeToTrace=trace(HEAD, "V"), downstreamNodeToTrace=trace(HEAD, "V"))
    assert_error(check("batched_tdb", body), RequestValidationError, f"{DOWN}.attentionTraceType")


def test_attention_node_needs_a_trace_type(check):
    error = check("batched_tdb", tdb(upstreamNodeToTrace=trace(HEAD)))
    assert_error(
        error, RequestValidationError, f"{UP}.attentionTraceType", text="attention_trace_type"
    )


def test_non_attention_node_takes_no_trace_type(check):
    error = check("batched_tdb", tdb(upstreamNodeToTrace=trace(node([1, 1]), "Q")))
    assert_error(error, RequestValidationError, f"{UP}.attentionTraceType")


def test_traced_node_pass_type_must_be_forward(check):
    error = check("batched_tdb", tdb(upstreamNodeToTrace=trace(node([1, 1], pass_type="backward"))))
    assert_error(error, RequestValidationError, f"{UP}.nodeIndex.passType")


def test_traced_node_types(check):
    error = check("batched_tdb", tdb(upstreamNodeToTrace=trace(node([1, 0], "layer", None))))
    assert_error(error, RequestValidationError, f"{UP}.nodeIndex.nodeType")
    error = check("batched_tdb", tdb(upstreamNodeToTrace=trace(node([1, 0], "autoencoder_latent"))))
    assert_error(error, UnsupportedError, f"{UP}.nodeIndex.nodeType")


def test_traced_node_indices(check):
    error = check("batched_tdb", tdb(upstreamNodeToTrace=trace(node([None, 1]))))
    assert_error(error, RequestValidationError, f"{UP}.nodeIndex.tensorIndices.0")
    error = check("batched_tdb", tdb(upstreamNodeToTrace=trace(node([1, 300]))))
    assert_error(error, RequestValidationError, f"{UP}.nodeIndex.tensorIndices.1")
    error = check("batched_tdb", tdb(upstreamNodeToTrace=trace(node([1]))))
    assert_error(error, RequestValidationError, f"{UP}.nodeIndex.tensorIndices")
    error = check("batched_tdb", tdb(upstreamNodeToTrace=trace(node([1, 1], layer_index=None))))
    assert_error(error, RequestValidationError, f"{UP}.nodeIndex.layerIndex")
    error = check("batched_tdb", tdb(upstreamNodeToTrace=trace(node([1, 1], layer_index=7))))
    assert_error(error, RequestValidationError, f"{UP}.nodeIndex.layerIndex")


# -- TDB losses and other fields -------------------------------------------------------------


def test_kept_loss_needs_targets(check):
    error = check("batched_tdb", tdb(targetTokens=[]))
    assert_error(error, RequestValidationError, "subRequests.0.targetTokens", 422, "empty")


def test_kept_loss_strings_must_be_one_token(check):
    error = check("batched_tdb", tdb(distractorTokens=["!", " elephantine"]))
    assert_error(error, RequestError, "subRequests.0.distractorTokens.1", 400)
    assert error.message == "' elephantine' decoded to [20950, 500]; wanted exactly 1 token"
    error = check("batched_tdb", tdb(targetTokens=[""]))
    assert_error(error, RequestError, "subRequests.0.targetTokens.0", 400)
    assert error.message == "'' decoded to []; wanted exactly 1 token"


def test_dropped_loss_is_not_checked(check):
    body = tdb(targetTokens=[" elephantine"], upstreamNodeToTrace=trace(node([1, 1])))
    assert check("batched_tdb", body) is None
    body = tdb(targetTokens=[" elephantine"], upstreamNodeToTrace=trace(HEAD, "V"))
    assert_error(check("batched_tdb", body), RequestError, "subRequests.0.targetTokens.0", 400)


def test_top_and_bottom_k_for_node_table(check):
    error = check("batched_tdb", tdb(topAndBottomKForNodeTable=0))
    assert_error(error, RequestValidationError, "subRequests.0.topAndBottomKForNodeTable")


def test_autoencoder_component_types_are_unsupported(check):
    error = check("batched_tdb", tdb(componentTypeForMlp="autoencoder_latent"))
    assert_error(error, UnsupportedError, "subRequests.0.componentTypeForMlp")
    error = check("batched_tdb", tdb(componentTypeForAttention="autoencoder_latent"))
    assert_error(error, UnsupportedError, "subRequests.0.componentTypeForAttention")


def test_errors_name_the_sub_request(check):
    body = tdb()
    body["subRequests"].append({**body["subRequests"][0], "topAndBottomKForNodeTable": -1})
    error = check("batched_tdb", body)
    assert_error(error, RequestValidationError, "subRequests.1.topAndBottomKForNodeTable")


# -- ablation specs --------------------------------------------------------------------------

ABL = "inferenceRequestSpec.ablationSpecs.0.index"


def with_ablation(*specs) -> dict:
    return ds({"ablationSpecs": list(specs)})


def test_ablation_spec_locations(check):
    assert check("derived_scalars", with_ablation(ablation("mlp.post_act", ["All", 0]))) is None
    error = check("derived_scalars", with_ablation(ablation("resid.post_mlp_ln", [0, 0])))
    assert_error(
        error, RequestValidationError, f"{ABL}.activationLocationType", text="cannot be hooked"
    )
    error = check("derived_scalars", with_ablation(ablation("online_autoencoder_latent", [0, 0])))
    assert_error(error, UnsupportedError, f"{ABL}.activationLocationType")


def test_ablation_spec_index_count(check):
    error = check("derived_scalars", with_ablation(ablation("mlp.post_act", [1])))
    assert_error(error, RequestValidationError, f"{ABL}.tensorIndices", text="has 2 axes")


def test_ablation_spec_index_ranges(check):
    error = check("derived_scalars", with_ablation(ablation("attn.qk_probs", [0, 3, "All"])))
    assert_error(error, RequestValidationError, f"{ABL}.tensorIndices.1")
    error = check("derived_scalars", with_ablation(ablation("resid.post_attn", [0, 64])))
    assert_error(error, RequestValidationError, f"{ABL}.tensorIndices.1")
    error = check("derived_scalars", with_ablation(ablation("attn.q", [0, 3, 16])))
    assert_error(error, RequestValidationError, f"{ABL}.tensorIndices.2")
    assert check("derived_scalars", with_ablation(ablation("attn.q", [-1, -4, 15]))) is None


def test_ablation_spec_layers(check):
    error = check(
        "derived_scalars", with_ablation(ablation("resid.post_emb", [0, 0], layer_index=0))
    )
    assert_error(error, RequestValidationError, f"{ABL}.layerIndex", text="once per model")
    error = check("derived_scalars", with_ablation(ablation("mlp.post_act", [0, 0], layer_index=3)))
    assert_error(error, RequestValidationError, f"{ABL}.layerIndex")
    assert (
        check("derived_scalars", with_ablation(ablation("mlp.post_act", [0, 0], layer_index=None)))
        is None
    )
    ln_f = ablation("resid.ln_f.scale", ["All", "All"], layer_index=None, pass_type="backward")
    assert check("derived_scalars", with_ablation(ln_f)) is None


# -- loss configs ----------------------------------------------------------------------------

LOSS_PATH = "inferenceRequestSpec.lossFnConfig"


def with_loss(**loss) -> dict:
    return ds({"lossFnConfig": loss})


def test_loss_targets_required(check):
    for name in ("logit_diff", "logit_minus_mean", "probs"):
        error = check("derived_scalars", with_loss(name=name))
        assert_error(error, RequestValidationError, f"{LOSS_PATH}.targetTokens", 422, "null")
        error = check("derived_scalars", with_loss(name=name, targetTokens=[]))
        assert_error(error, RequestValidationError, f"{LOSS_PATH}.targetTokens", 422, "empty")
    assert check("derived_scalars", with_loss(name="zero")) is None


def test_loss_distractors_only_for_logit_diff(check):
    for name in ("logit_minus_mean", "probs"):
        error = check(
            "derived_scalars", with_loss(name=name, targetTokens=["."], distractorTokens=[])
        )
        assert_error(error, RequestValidationError, f"{LOSS_PATH}.distractorTokens")
        assert check("derived_scalars", with_loss(name=name, targetTokens=["."])) is None
    assert (
        check(
            "derived_scalars", with_loss(name="logit_diff", targetTokens=["."], distractorTokens=[])
        )
        is None
    )


def test_loss_strings_are_single_tokens(check):
    error = check("derived_scalars", with_loss(name="probs", targetTokens=[".", "Hello world"]))
    assert_error(error, RequestError, f"{LOSS_PATH}.targetTokens.1", 400, "wanted exactly 1 token")


# -- trace configs ---------------------------------------------------------------------------

TRACE = "inferenceRequestSpec.traceConfig"


def trace_config(n, trace_type=None, downstream=None) -> dict:
    return {
        "nodeIndex": n,
        "preOrPostAct": "pre",
        "detachLayerNormScale": True,
        "attentionTraceType": trace_type,
        "downstreamTraceConfig": downstream,
    }


def with_trace(config, **inference) -> dict:
    return ds({"traceConfig": config, **inference}, dst="mlp_act_times_grad")


def test_trace_config_rules(check):
    assert check("derived_scalars", with_trace(trace_config(node([1, 1])))) is None
    error = check("derived_scalars", with_trace(trace_config(HEAD)))
    assert_error(error, RequestValidationError, f"{TRACE}.attentionTraceType")
    down = trace_config(node([2, 1], layer_index=2))
    error = check("derived_scalars", with_trace(trace_config(HEAD, "K", down)))
    assert_error(error, RequestValidationError, f"{TRACE}.downstreamTraceConfig")
    assert check("derived_scalars", with_trace(trace_config(HEAD, "V", down))) is None
    nested = trace_config(HEAD, "V", trace_config(HEAD, "V"))
    error = check("derived_scalars", with_trace(nested))
    assert_error(error, RequestValidationError, f"{TRACE}.downstreamTraceConfig.attentionTraceType")
    error = check(
        "derived_scalars", with_trace(trace_config(HEAD, "V", trace_config(node([9, 1]))))
    )
    assert_error(
        error, RequestValidationError, f"{TRACE}.downstreamTraceConfig.nodeIndex.tensorIndices.0"
    )


def test_v_trace_without_downstream_needs_a_loss(check):
    error = check("derived_scalars", with_trace(trace_config(HEAD, "V")))
    assert_error(error, RequestValidationError, LOSS_PATH, text="through V")
    assert check("derived_scalars", with_trace(trace_config(HEAD, "V"), **LOSS)) is None


WITHIN = "inferenceRequestSpec.activationIndexForWithinLayerGrad"


def within_index(location="mlp.post_act", indices=(0, 1), layer=0, pass_type="forward") -> dict:
    return {
        "activationLocationType": location,
        "tensorIndices": list(indices),
        "layerIndex": layer,
        "passType": pass_type,
    }


def test_activation_index_for_within_layer_grad_is_accepted_at_mlp_and_attention(check):
    for location, indices in (
        ("mlp.pre_act", (0, 1)),
        ("mlp.post_act", (1, "All")),
        ("attn.qk_logits", (2, 1, 0)),
        ("attn.qk_probs", (2, 1, 3)),
    ):
        body = ds({"activationIndexForWithinLayerGrad": within_index(location, indices)})
        assert check("derived_scalars", body) is None, location


def test_activation_index_for_within_layer_grad_refusals(check):
    def refused(index):
        return check("derived_scalars", ds({"activationIndexForWithinLayerGrad": index}))

    assert_error(
        refused(within_index("resid.post_mlp", (0, 1))),
        RequestValidationError,
        f"{WITHIN}.activationLocationType",
    )
    assert_error(
        refused(within_index("online_autoencoder_latent", (0, 1))),
        UnsupportedError,
        f"{WITHIN}.activationLocationType",
    )
    assert_error(
        refused(within_index(pass_type="backward")), RequestValidationError, f"{WITHIN}.passType"
    )
    assert_error(refused(within_index(layer=None)), RequestValidationError, f"{WITHIN}.layerIndex")
    assert_error(refused(within_index(layer=3)), RequestValidationError, f"{WITHIN}.layerIndex")
    assert_error(
        refused(within_index(indices=(0,))), RequestValidationError, f"{WITHIN}.tensorIndices"
    )
    assert_error(
        refused(within_index(indices=(0, 9999))),
        RequestValidationError,
        f"{WITHIN}.tensorIndices.1",
    )


# -- derived scalars -------------------------------------------------------------------------

DS_PATH = "derivedScalarsRequestSpec"


def test_derived_scalars_dst_kinds(check):
    error = check("derived_scalars", ds(dst="online_autoencoder_latent"))
    assert_error(error, UnsupportedError, f"{DS_PATH}.dst")
    error = check("derived_scalars", ds(dst="mlp_out_edge_attribution", **{}))
    assert_error(error, UnsupportedError, f"{DS_PATH}.dst", text="attribute")
    error = check("derived_scalars", ds(dst="unflattened_attn_write_norm"))
    assert_error(error, RequestValidationError, f"{DS_PATH}.dst", text="specType")


def test_derived_scalars_layer_index(check):
    error = check("derived_scalars", ds(layerIndex=None))
    assert_error(error, RequestValidationError, f"{DS_PATH}.layerIndex", text="per layer")
    error = check("derived_scalars", ds(dst="logits", layerIndex=0, activationIndex=5))
    assert_error(error, RequestValidationError, f"{DS_PATH}.layerIndex", text="must be null")
    assert (
        check("derived_scalars", ds(dst="logits", layerIndex=None, activationIndex=50256)) is None
    )


def test_derived_scalars_activation_index(check):
    error = check("derived_scalars", ds(activationIndex=256))
    assert_error(
        error, RequestValidationError, f"{DS_PATH}.activationIndex", text="mlp_acts of size 256"
    )
    error = check("derived_scalars", ds(dst="attn_write_norm", activationIndex=4))
    assert_error(error, RequestValidationError, f"{DS_PATH}.activationIndex", text="attn_heads")
    error = check("derived_scalars", ds(dst="always_one", layerIndex=None, activationIndex=1))
    assert_error(error, RequestValidationError, f"{DS_PATH}.activationIndex", text="singleton")


def test_derived_scalars_num_top_tokens(check):
    assert check("derived_scalars", ds(numTopTokens=5)) is None
    error = check("derived_scalars", ds(numTopTokens=0))
    assert_error(error, RequestValidationError, f"{DS_PATH}.numTopTokens")
    error = check("derived_scalars", ds(numTopTokens=50257))
    assert_error(error, RequestValidationError, f"{DS_PATH}.numTopTokens", text="at most 49661")
    error = check("derived_scalars", ds(dst="mlp_write_norm", numTopTokens=5))
    assert_error(error, RequestValidationError, f"{DS_PATH}.numTopTokens")


def test_derived_scalars_backward_needs_a_backward_variant(check):
    assert check("derived_scalars", ds(LOSS, passType="backward")) is None
    error = check("derived_scalars", ds(LOSS, dst="mlp_write_norm", passType="backward"))
    assert_error(error, RequestValidationError, f"{DS_PATH}.passType")


def test_neuron_record_normalisation_names_a_kept_kind_and_a_dataset(check):
    record = {"dst": "mlp_post_act", "layerIndex": 0, "activationIndex": 3, "datasets": ["x"]}
    assert check("derived_scalars", ds(normalizeActivationsUsingNeuronRecord=record)) is None
    error = check(
        "derived_scalars", ds(normalizeActivationsUsingNeuronRecord={**record, "datasets": []})
    )
    path = f"{DS_PATH}.normalizeActivationsUsingNeuronRecord"
    assert_error(error, RequestValidationError, f"{path}.datasets")
    error = check(
        "derived_scalars",
        ds(normalizeActivationsUsingNeuronRecord={**record, "dst": "attn_write_norm"}),
    )
    assert_error(error, RequestValidationError, f"{path}.dst")


def test_input_direction_dst_needs_one_mlp_ablation(check):
    body = ds(dst="vocab_token_write_to_input_direction", layerIndex=None, activationIndex=0)
    error = check("derived_scalars", body)
    assert_error(error, RequestValidationError, f"{DS_PATH}.dst", text="exactly one")
    body["inferenceRequestSpec"]["ablationSpecs"] = [
        ablation("mlp.post_act", ["All", 7], layer_index=1)
    ]
    assert check("derived_scalars", body) is None
    body["inferenceRequestSpec"]["ablationSpecs"] = [
        ablation("mlp.pre_act", ["All", 7], layer_index=1)
    ]
    assert_error(check("derived_scalars", body), RequestValidationError, f"{DS_PATH}.dst")


# -- derived attention scalars ---------------------------------------------------------------

DAS_PATH = "derivedAttentionScalarsRequestSpec"


def das(**spec) -> dict:
    body_spec = {"dst": "unflattened_attn_write_norm", "layerIndex": 1, "activationIndex": 2}
    body_spec.update(spec)
    return {
        "inferenceRequestSpec": {"prompt": PROMPT},
        "derivedAttentionScalarsRequestSpec": body_spec,
    }


def test_derived_attention_scalars(check):
    assert check("derived_attention_scalars", das()) is None
    error = check("derived_attention_scalars", das(dst="attn_write_norm"))
    assert_error(error, RequestValidationError, f"{DAS_PATH}.dst")
    error = check("derived_attention_scalars", das(dst="attn_write_to_latent_summed_over_heads"))
    assert_error(error, UnsupportedError, f"{DAS_PATH}.dst")
    error = check("derived_attention_scalars", das(activationIndex=4))
    assert_error(error, RequestValidationError, f"{DAS_PATH}.activationIndex")
    error = check("derived_attention_scalars", das(layerIndex=None))
    assert_error(error, RequestValidationError, f"{DAS_PATH}.layerIndex")


def test_derived_attention_spec_with_spec_type_in_a_batch(check):
    spec = {
        **das()["derivedAttentionScalarsRequestSpec"],
        "specType": "derived_attention_scalars_request_spec",
    }
    assert check("batched", batched((PROMPT, {}, {"a": spec}))) is None


# -- multiple top-k --------------------------------------------------------------------------

MTK_PATH = "multipleTopKDerivedScalarsRequestSpec"


def test_top_and_bottom_k(check):
    assert check("multiple_top_k_derived_scalars", mtk(topAndBottomK=None)) is None
    error = check("multiple_top_k_derived_scalars", mtk(topAndBottomK=0))
    assert_error(error, RequestValidationError, f"{MTK_PATH}.topAndBottomK")


def test_token_index(check):
    assert check("multiple_top_k_derived_scalars", mtk(tokenIndex=-3)) is None
    error = check("multiple_top_k_derived_scalars", mtk(tokenIndex=3))
    assert_error(error, RequestValidationError, f"{MTK_PATH}.tokenIndex")


def test_groups_share_node_type_order(check):
    groups = {
        "write_norm": ["mlp_write_norm", "unflattened_attn_write_norm"],
        "act_times_grad": ["unflattened_attn_act_times_grad", "mlp_act_times_grad"],
    }
    error = check("multiple_top_k_derived_scalars", mtk(LOSS, dstListByGroupId=groups))
    assert_error(
        error,
        RequestValidationError,
        f"{MTK_PATH}.dstListByGroupId.act_times_grad",
        text="same order",
    )


def test_group_node_types_and_dsts_are_distinct(check):
    error = check(
        "multiple_top_k_derived_scalars",
        mtk(dstListByGroupId={"write_norm": ["mlp_write_norm", "mlp_post_act"]}),
    )
    assert_error(
        error, RequestValidationError, f"{MTK_PATH}.dstListByGroupId.write_norm.1", text="node type"
    )
    error = check(
        "multiple_top_k_derived_scalars", mtk(dstListByGroupId={"write_norm": ["logits", "logits"]})
    )
    assert_error(
        error, RequestValidationError, f"{MTK_PATH}.dstListByGroupId.write_norm.1", text="twice"
    )


def test_groups_must_not_be_empty(check):
    error = check("multiple_top_k_derived_scalars", mtk(dstListByGroupId={}))
    assert_error(error, RequestValidationError, f"{MTK_PATH}.dstListByGroupId")
    error = check("multiple_top_k_derived_scalars", mtk(dstListByGroupId={"logits": []}))
    assert_error(error, RequestValidationError, f"{MTK_PATH}.dstListByGroupId.logits")


def test_group_dsts_autoencoder_and_backward(check):
    error = check(
        "multiple_top_k_derived_scalars",
        mtk(dstListByGroupId={"write_norm": ["online_mlp_autoencoder_write_norm"]}),
    )
    assert_error(error, UnsupportedError, f"{MTK_PATH}.dstListByGroupId.write_norm.0")
    error = check("multiple_top_k_derived_scalars", mtk(LOSS, passType="backward"))
    assert_error(error, RequestValidationError, f"{MTK_PATH}.passType", text="mlp_write_norm")
    groups = {"activation": ["mlp_post_act", "attn_qk_probs"]}
    assert (
        check(
            "multiple_top_k_derived_scalars",
            mtk(LOSS, passType="backward", dstListByGroupId=groups),
        )
        is None
    )


def test_intermediate_sums_keep_at_most_three_axes(check):
    dims = [
        "sequence_tokens",
        "attended_to_sequence_tokens",
        "attn_heads",
        "residual_stream_channels",
    ]
    body = mtk(
        dstListByGroupId={"write_norm": ["attn_write"]}, dimensionsToKeepForIntermediateSum=dims
    )
    assert_error(
        check("multiple_top_k_derived_scalars", body),
        RequestValidationError,
        f"{MTK_PATH}.dimensionsToKeepForIntermediateSum",
    )
    body = mtk(
        dstListByGroupId={"write_norm": ["attn_write"]}, dimensionsToKeepForIntermediateSum=dims[:3]
    )
    assert check("multiple_top_k_derived_scalars", body) is None


# -- scored tokens and token pairs -----------------------------------------------------------

SPEC = "inferenceSubRequests.0.processingRequestSpecByName"


def test_scored_tokens_depend_on_an_earlier_spec(check):
    assert check("batched", batched((PROMPT, {}, {"topK": TOP_K, "s": SCORED}))) is None
    error = check("batched", batched((PROMPT, {}, {"s": SCORED, "topK": TOP_K})))
    assert_error(error, RequestValidationError, f"{SPEC}.s.dependsOnSpecName")
    error = check(
        "batched", batched((PROMPT, {}, {"topK": TOP_K, "s": {**SCORED, "dependsOnSpecName": "x"}}))
    )
    assert_error(error, RequestValidationError, f"{SPEC}.s.dependsOnSpecName")


def test_dependency_in_another_sub_request_does_not_count(check):
    body = batched((PROMPT, {}, {"topK": TOP_K}), (PROMPT, {}, {"s": SCORED}))
    error = check("batched", body)
    assert_error(
        error,
        RequestValidationError,
        "inferenceSubRequests.1.processingRequestSpecByName.s.dependsOnSpecName",
    )


def test_scored_tokens_count(check):
    usable = 50257 - excluded_token_count()
    assert excluded_token_count() == 596
    ok = {"topK": TOP_K, "s": {**SCORED, "numTokens": usable}}
    assert check("batched", batched((PROMPT, {}, ok))) is None
    for bad in (0, usable + 1):
        body = batched((PROMPT, {}, {"topK": TOP_K, "s": {**SCORED, "numTokens": bad}}))
        assert_error(check("batched", body), RequestValidationError, f"{SPEC}.s.numTokens")


def test_token_pair_attribution(check):
    pair = {"numTokensAttendedTo": 3, "dependsOnSpecName": "topK"}
    assert check("batched", batched((PROMPT, {}, {"topK": TOP_K, "p": pair}))) is None
    body = batched((PROMPT, {}, {"topK": TOP_K, "p": {**pair, "numTokensAttendedTo": 0}}))
    assert_error(check("batched", body), RequestValidationError, f"{SPEC}.p.numTokensAttendedTo")
    body = batched((PROMPT, {}, {"p": pair}))
    assert_error(check("batched", body), RequestValidationError, f"{SPEC}.p.dependsOnSpecName")


# -- gradients -------------------------------------------------------------------------------

GRADIENT_MESSAGE = (
    "loss_fn_for_backward_pass or trace_config must be defined if gradients are required"
)


def test_gradients_need_a_loss_or_a_trace(check):
    error = check("derived_scalars", ds(dst="mlp_act_times_grad"))
    assert_error(error, RequestValidationError, f"{DS_PATH}.dst", 422, GRADIENT_MESSAGE)
    error = check("derived_scalars", ds(passType="backward"))
    assert_error(error, RequestValidationError, f"{DS_PATH}.passType", 422, GRADIENT_MESSAGE)
    body = mtk(dstListByGroupId={"act_times_grad": ["mlp_act_times_grad"]})
    error = check("multiple_top_k_derived_scalars", body)
    assert_error(
        error,
        RequestValidationError,
        f"{MTK_PATH}.dstListByGroupId.act_times_grad.0",
        422,
        GRADIENT_MESSAGE,
    )
    assert check("derived_scalars", ds(LOSS, dst="mlp_act_times_grad")) is None
    assert check("derived_scalars", with_trace(trace_config(node([1, 1])))) is None


def test_gradients_are_checked_per_sub_request(check):
    spec = {"d": {"dst": "mlp_act_times_grad", "layerIndex": 0, "activationIndex": 0}}
    body = batched((PROMPT, LOSS, spec), (PROMPT, {}, spec))
    error = check("batched", body)
    assert_error(
        error, RequestValidationError, "inferenceSubRequests.1.processingRequestSpecByName.d.dst"
    )


def test_validation_does_not_change_the_request(meta, tokenizer):
    body = tdb(nodeAblations=[{"nodeIndex": node([1, 5]), "value": 0.0}])
    request = parse_request("batched_tdb", copy.deepcopy(body))
    validate_request("batched_tdb", request, meta, tokenizer)
    assert request == parse_request("batched_tdb", body)


def test_wire_dicts_and_endpoints(meta, tokenizer):
    validate_request("batched_tdb", tdb(), meta, tokenizer)
    validate_request("model_info", None, meta, tokenizer)
    with pytest.raises(RequestValidationError):
        validate_request("batched_tdb", tdb(topAndBottomKForNodeTable=0), meta, tokenizer)
    with pytest.raises(NotFoundError):
        validate_request("nope", {}, meta, tokenizer)


# -- the AE cases, validated with the AEs their server key names (read without torch) ----------

AE_REQUEST_CASES = [
    (n, c) for n, c in CASES if c["endpoint"] != "model_info" and needs_autoencoders(c)
]


def served_autoencoders(server: dict):
    from models.autoencoder_files import read_autoencoder_info
    from models.autoencoders import ServedAutoencoders

    slots = {}
    for slot, key in (("mlp", "mlpAutoencoder"), ("attention", "attentionAutoencoder")):
        name = server.get(key)
        slots[slot] = (
            None if name is None else read_autoencoder_info(str(GOLDEN / "autoencoders" / name))
        )
    return ServedAutoencoders(**slots)


@pytest.mark.parametrize(("name", "case"), AE_REQUEST_CASES, ids=[n for n, _ in AE_REQUEST_CASES])
def test_golden_ae_requests_are_refused_before_running_exactly_when_tdb_failed(
    meta, tokenizer, name, case
):
    request = parse_request(case["endpoint"], case["request"])
    try:
        validate_request(
            case["endpoint"], request, meta, tokenizer, served_autoencoders(case["server"])
        )
        error = None
    except ActqError as raised:
        error = raised
    if case.get("error") is None:
        assert error is None
    else:
        assert error is not None and 400 <= error.status < 500


def test_ae_refusals_name_the_field(meta, tokenizer):
    by_name = dict(CASES)

    def refusal(case_name: str) -> ActqError:
        case = by_name[case_name]
        with pytest.raises(ActqError) as raised:
            validate_request(
                case["endpoint"],
                parse_request(case["endpoint"], case["request"]),
                meta,
                tokenizer,
                served_autoencoders(case["server"]),
            )
        return raised.value

    paths = {
        "136-ae-err-tdb-trace-attn-v-downstream-mlp-latent": "subRequests.0.downstreamNodeToTrace",
        "142-ae-err-offline-latent-top-tokens": "derivedScalarsRequestSpec.numTopTokens",
        "145-ae-err-attention-latent-without-attention-ae": "derivedScalarsRequestSpec.dst",
        "148-ae-err-tdb-latent-ablation-out-of-range": (
            "subRequests.0.nodeAblations.0.nodeIndex.tensorIndices.1"
        ),
        "166-ae-err-batched-token-pair-attribution-more-than-t": (
            "inferenceSubRequests.0.processingRequestSpecByName.tokenPairAttribution"
            ".numTokensAttendedTo"
        ),
        "169-ae-err-tdb-mlp-latent-mode-without-mlp-ae": "subRequests.0.componentTypeForMlp",
        "178-ae-err-generic-offline-write-norm-two-aes": "derivedScalarsRequestSpec.dst",
        "196-ae-err-offline-latent-partial-ae": "derivedScalarsRequestSpec.dst",
    }
    for case_name, path in paths.items():
        error = refusal(case_name)
        assert (error.path, error.status) == (path, 422), case_name

"""A Llama-family model with a SentencePiece-style tokenizer.json end to end (families.md §1.4): the
prompt gets the tokenizer's BOS as position 0 of ``tokensAsInts``/``tokensAsStrings``, counted in
the context and indexable by node indices, over HTTP (embedded ``actq up``) and through ``actq
run``; the API (which has no torch) and the worker count the same tokens, so the last token index
is accepted and the next one is a 422 naming the field on both; ``ACTQ_ADD_BOS=never`` drops the
BOS (TDB's literal rule) and shifts the count by one.

Expected ids come from the ``tokenizers`` library on the model's own tokenizer.json."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from api.client import Client, ClientError
from tests.conftest import _base_env, assert_same_response, run_actq, strip_timing
from tests.family_models import SP_BOS, build, sentencepiece_tokenizer
from tests.stack import Stack, free_port, start_up

PROMPT = "Paris is the capital of France, and Berlin is the capital of Germany."


def _ui_pair(ablated_token: int) -> dict:
    """TDB's UI pair: a clean sub-request and one with an attention head ablated at
    `ablated_token` (attending to token 0, the BOS)."""

    def sub(ablations):
        return {
            "prompt": PROMPT,
            "targetTokens": [" capital"],
            "distractorTokens": [" Paris"],
            "componentTypeForMlp": "neuron",
            "componentTypeForAttention": "attention_head",
            "topAndBottomKForNodeTable": 2,
            "hideEarlyLayersWhenAblating": False,
            "nodeAblations": ablations,
            "upstreamNodeToTrace": None,
            "downstreamNodeToTrace": None,
        }

    ablation = {
        "nodeIndex": {
            "nodeType": "attention_head",
            "tensorIndices": [ablated_token, 0, 1],
            "layerIndex": 1,
            "passType": "forward",
        },
        "value": 0.0,
    }
    return {"subRequests": [sub(None), sub([ablation])]}


@pytest.fixture(scope="module")
def sp_stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sentencepiece")
    model_dir = build("llama", workdir / "sp-llama", seed=4)
    sentencepiece_tokenizer().save(str(model_dir / "tokenizer.json"))
    port = free_port()
    env = _base_env(workdir)
    env["ACTQ_API_URL"] = f"http://127.0.0.1:{port}"
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    try:
        start_up(stack, port, workdir / "data", model_dir)
        yield model_dir, stack
    finally:
        stack.stop()


def _actq_run(stack, model_dir, request, path, **extra_env):
    path.write_text(json.dumps(request))
    env = {k: v for k, v in stack.env.items() if not k.startswith("ACTQ_")}
    env.update(extra_env)
    return run_actq("run", "batched_tdb", str(path), "--model", str(model_dir), env=env)


def _tokens(response: dict) -> tuple[list[int], list[str]]:
    data = response["inferenceSubResponses"][0]["inferenceResponse"]["inferenceAndTokenData"]
    return data["tokensAsInts"], data["tokensAsStrings"]


def test_bos_is_token_zero_over_http_and_actq_run(sp_stack, tmp_path):
    model_dir, stack = sp_stack
    reference = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    with_bos = reference.encode(PROMPT).ids
    plain = reference.encode(PROMPT, add_special_tokens=False).ids
    bos_id = reference.token_to_id(SP_BOS)
    assert with_bos == [bos_id, *plain]
    last = len(with_bos) - 1

    api = Client(stack.url, timeout=60)
    request = _ui_pair(last)
    job = api.submit("batched_tdb", request)
    final = api.wait(job["id"], timeout=300)
    assert final["status"] == "finished", final
    over_http = strip_timing(api.result_json(job["id"]))
    ids, strings = _tokens(over_http)
    assert ids == with_bos
    # the BOS decodes to its content; SentencePiece pieces map ▁ to a space, no first-token strip
    assert strings[0] == SP_BOS
    assert strings[1:] == [reference.id_to_token(i).replace("\u2581", " ") for i in plain]
    assert strings[1] == " Paris"

    out = _actq_run(stack, model_dir, request, tmp_path / "pair.json")
    assert out.returncode == 0, out.stderr
    assert_same_response(strip_timing(json.loads(out.stdout)), over_http)

    # one past the last token (BOS counted): the API refuses before queueing, the engine too
    beyond = _ui_pair(last + 1)
    with pytest.raises(ClientError) as refused:
        api.submit("batched_tdb", beyond)
    assert refused.value.status == 422
    assert "subRequests.1.nodeAblations" in json.dumps(refused.value.body)
    out = _actq_run(stack, model_dir, beyond, tmp_path / "beyond.json")
    assert out.returncode == 2, out.stderr
    assert "subRequests.1.nodeAblations" in out.stderr.decode()

    # ACTQ_ADD_BOS=never: TDB's literal rule, one token fewer, so `last` is now out of range
    out = _actq_run(
        stack, model_dir, _ui_pair(last - 1), tmp_path / "never.json", ACTQ_ADD_BOS="never"
    )
    assert out.returncode == 0, out.stderr
    assert _tokens(json.loads(out.stdout))[0] == plain
    out = _actq_run(stack, model_dir, request, tmp_path / "never-last.json", ACTQ_ADD_BOS="never")
    assert out.returncode == 2, out.stderr
    assert "subRequests.1.nodeAblations" in out.stderr.decode()

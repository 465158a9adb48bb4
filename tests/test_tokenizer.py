"""Our GPT-2 tokenizer gives Hugging Face's ids and TDB's per-token strings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.errors import RequestError
from models.model_meta import resolve_model
from models.tokenizer import Gpt2Tokenizer, excluded_token_ids, load_tokenizer
from tests.shared_dir import CASES, ORACLE_MODEL

GOLDEN = ORACLE_MODEL
EXCLUDED_FILE = (
    Path(__file__).parent.parent / "models" / "data" / "least_common_gpt2_token_strings.json"
)

TEXTS = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\r\n",
    "\t",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces",
    "trailing spaces   ",
    "multiple   inner    spaces",
    "tabs\tand\nnewlines\n\n  indented",
    "I'm sure you'll see they've done it, he'd said; it's 'quoted'.",
    "DON'T SHOUT",
    "numbers 12345 3.14159 1,000,000 2024-06-11",
    "café naïve résumé",
    "é",
    "日本語のテキスト",
    "中文字符",
    "Ελληνικά и русский",
    "مرحبا بالعالم",
    "emoji 🎉🚀 family 👨‍👩‍👧 flag 🇫🇷",
    "combining e\u0301 and zero\u200bwidth",
    "\ufffd replacement char",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "before<|endoftext|>after",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    " <|endoftext|> spaced ",
    "text\n<|endoftext|>\nmore",
    "<|endoftext",
    "<|endoftext|",
    "def f(x):\n    return x ** 2  # square\n",
    "https://example.com/path?q=1&r=2",
    "a" * 200,
    "Ġ Ċ ĉ",
    "<s></s>[CLS]",
]


@pytest.fixture(scope="module")
def tokenizer() -> Gpt2Tokenizer:
    return load_tokenizer(resolve_model(str(GOLDEN)))


@pytest.fixture(scope="module")
def hf_tokenizer():
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2TokenizerFast.from_pretrained(str(GOLDEN))


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_hugging_face(tokenizer, hf_tokenizer, text):
    assert tokenizer.encode(text) == hf_tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_token_matches_hugging_face_single_token_decode(tokenizer, hf_tokenizer, text):
    ids = tokenizer.encode(text)
    expected = [hf_tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    assert tokenizer.decode_tokens(ids) == expected


def test_encode_batch_matches_encode(tokenizer):
    assert tokenizer.encode_batch(TEXTS) == [tokenizer.encode(t) for t in TEXTS]


def test_endoftext_is_the_special_id(tokenizer):
    assert tokenizer.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert tokenizer.eot_id == 50256
    assert tokenizer.decode_token(50256) == "<|endoftext|>"


def test_vocab_size(tokenizer):
    assert tokenizer.vocab_size == 50257


def test_split_multibyte_character_decodes_to_replacement_per_token(tokenizer):
    ids = tokenizer.encode("🎉")
    assert len(ids) > 1
    assert all("\ufffd" in s for s in tokenizer.decode_tokens(ids))


def test_decode_keeps_spaces(tokenizer):
    assert tokenizer.decode_tokens(tokenizer.encode(" Hello ,")) == [" Hello", " ,"]


def test_decode_out_of_range_id_is_an_error(tokenizer):
    with pytest.raises(RequestError):
        tokenizer.decode_token(50257)
    with pytest.raises(RequestError):
        tokenizer.decode_token(-1)


def test_builtin_tokenizer_equals_the_golden_directory_one(tokenizer):
    builtin = load_tokenizer(resolve_model("tiny-gpt2"))
    assert builtin is not tokenizer
    for text in TEXTS:
        assert builtin.encode(text) == tokenizer.encode(text)
    assert builtin.decode_tokens(range(50257)) == tokenizer.decode_tokens(range(50257))


def test_load_tokenizer_is_shared(tokenizer):
    assert load_tokenizer(resolve_model(str(GOLDEN))) is tokenizer


def test_tokenizer_json_directory(tmp_path, tokenizer, hf_tokenizer):
    hf_tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text((GOLDEN / "config.json").read_text())
    from_json = load_tokenizer(resolve_model(str(tmp_path)))
    assert from_json.source.endswith("tokenizer.json")
    for text in TEXTS:
        assert from_json.encode(text) == tokenizer.encode(text)
        ids = tokenizer.encode(text)
        assert from_json.decode_tokens(ids) == tokenizer.decode_tokens(ids)


def _token_data(node):
    """Every inferenceAndTokenData in a response, in document order."""
    if isinstance(node, dict):
        if "tokensAsInts" in node:
            yield node
        for value in node.values():
            yield from _token_data(value)
    elif isinstance(node, list):
        for value in node:
            yield from _token_data(value)


def _prompts(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "prompt":
                yield value
            else:
                yield from _prompts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _prompts(value)


GOLDEN_CASES = sorted(
    p.name for p in CASES.glob("*.json") if any(_token_data(json.loads(p.read_text())["response"]))
)


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_tokens_match(tokenizer, case):
    data = json.loads((CASES / case).read_text())
    token_data = list(_token_data(data["response"]))
    prompts = list(_prompts(data["request"]))
    assert len(prompts) == len(token_data)
    for prompt, td in zip(prompts, token_data, strict=True):
        assert tokenizer.encode(prompt) == td["tokensAsInts"]
        assert tokenizer.decode_tokens(td["tokensAsInts"]) == td["tokensAsStrings"]


def test_golden_top_token_strings_are_vocabulary_strings(tokenizer):
    strings = set(tokenizer.decode_tokens(range(tokenizer.vocab_size)))
    data = json.loads((CASES / "003-ds-mlp-post-act-l2-top-tokens.json").read_text())
    top = data["response"]["derivedScalarsResponseData"]["topTokens"]
    found = [entry["token"] for side in ("top", "bottom") for entry in top[side]]
    assert found
    assert set(found) <= strings


def test_single_token_id(tokenizer):
    assert tokenizer.single_token_id(" Germany") == 4486
    assert tokenizer.single_token_id("<|endoftext|>") == 50256


def test_single_token_id_message_matches_tdb(tokenizer):
    data = json.loads((CASES / "066-err-target-not-one-token.json").read_text())
    with pytest.raises(RequestError) as caught:
        tokenizer.single_token_id(" elephantine", path="subRequests.0.targetTokens.0")
    assert caught.value.message == data["error"]["message"]
    assert caught.value.status == 400
    assert caught.value.path == "subRequests.0.targetTokens.0"


def test_single_token_id_of_empty_string(tokenizer):
    with pytest.raises(RequestError) as caught:
        tokenizer.single_token_id("")
    assert caught.value.message == "'' decoded to []; wanted exactly 1 token"


def test_excluded_token_ids(tokenizer):
    strings = json.loads(EXCLUDED_FILE.read_text())
    ids = excluded_token_ids(tokenizer)
    assert len(ids) == len(strings) == 596
    assert len(set(ids)) == 596
    assert [tokenizer.encode(s) for s in strings] == [[i] for i in ids]
    assert excluded_token_ids(tokenizer) == ids

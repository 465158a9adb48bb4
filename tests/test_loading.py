"""Checkpoints load into GPT2LMHeadModel-named float32 tensors; tiny-gpt2 is generated identically."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.errors import NotFoundError
from models.model_meta import TINY_GPT2_CONFIG, resolve_model
from models.tokenizer import load_tokenizer
from tests.shared_dir import ORACLE_MODEL
from worker.engine.loading import ensure_tiny_gpt2, load_state_dict

GOLDEN = ORACLE_MODEL
# sha256 of the generated model.safetensors: the same on every machine and run.
TINY_GPT2_SHA256 = "07c52452d9805dd2a0aebe1c6205ba585c6a4478bc8473a1bf1099ccb101a625"
PROMPT = "Paris is the capital of France, and Berlin is the capital of"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def golden_state() -> dict[str, torch.Tensor]:
    return load_state_dict(resolve_model(str(GOLDEN)))


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("data")
    ensure_tiny_gpt2(data_dir)
    return data_dir


def _model_dir(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text((GOLDEN / "config.json").read_text())
    if name.endswith(".safetensors"):
        save_file(tensors, str(directory / name))
    else:
        torch.save(tensors, directory / name)
    return directory


def test_golden_state_dict_has_hf_names_and_shapes(golden_state):
    expected = {
        "transformer.wte.weight": (50257, 64),
        "transformer.wpe.weight": (64, 64),
        "transformer.h.0.attn.c_attn.weight": (64, 192),
        "transformer.h.0.attn.c_attn.bias": (192,),
        "transformer.h.1.attn.c_proj.weight": (64, 64),
        "transformer.h.2.mlp.c_fc.weight": (64, 256),
        "transformer.h.2.mlp.c_proj.weight": (256, 64),
        "transformer.h.2.ln_2.bias": (64,),
        "transformer.ln_f.weight": (64,),
    }
    assert {k: tuple(golden_state[k].shape) for k in expected} == expected
    assert len(golden_state) == 2 + 3 * 12 + 2
    assert "lm_head.weight" not in golden_state
    assert all(t.dtype == torch.float32 for t in golden_state.values())


def test_checkpoint_without_prefix_loads_under_hf_names(tmp_path, golden_state):
    bare = {k.removeprefix("transformer."): v for k, v in golden_state.items()}
    directory = _model_dir(tmp_path, bare, "model.safetensors")
    loaded = load_state_dict(resolve_model(str(directory)))
    assert loaded.keys() == golden_state.keys()
    assert all(torch.equal(loaded[k], golden_state[k]) for k in loaded)


def test_pytorch_bin_in_half_precision_loads_as_float32(tmp_path, golden_state):
    half = {k: v.half() for k, v in golden_state.items()}
    half["transformer.h.0.attn.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool)
    half["lm_head.weight"] = half["transformer.wte.weight"]
    directory = _model_dir(tmp_path, half, "pytorch_model.bin")
    loaded = load_state_dict(resolve_model(str(directory)))
    assert "transformer.h.0.attn.bias" not in loaded
    assert loaded["lm_head.weight"].dtype == torch.float32
    assert torch.equal(
        loaded["transformer.wpe.weight"], golden_state["transformer.wpe.weight"].half().float()
    )


def test_sharded_safetensors_checkpoint_loads(tmp_path, golden_state):
    directory = tmp_path / "sharded"
    directory.mkdir()
    (directory / "config.json").write_text((GOLDEN / "config.json").read_text())
    keys = sorted(golden_state)
    shards = {
        "model-00001-of-00002.safetensors": keys[:10],
        "model-00002-of-00002.safetensors": keys[10:],
    }
    weight_map = {}
    for shard, shard_keys in shards.items():
        save_file({k: golden_state[k] for k in shard_keys}, str(directory / shard))
        weight_map.update(dict.fromkeys(shard_keys, shard))
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_state_dict(resolve_model(str(directory)))
    assert loaded.keys() == golden_state.keys()


def test_directory_without_weights_is_not_found(tmp_path):
    (tmp_path / "config.json").write_text((GOLDEN / "config.json").read_text())
    with pytest.raises(NotFoundError, match="model.safetensors"):
        load_state_dict(resolve_model(str(tmp_path)))


def test_tiny_gpt2_is_the_same_bytes_every_time(tmp_path, tiny_data_dir):
    again = ensure_tiny_gpt2(tmp_path)
    first = ensure_tiny_gpt2(tiny_data_dir)
    assert _sha256(again / "model.safetensors") == _sha256(first / "model.safetensors")
    assert _sha256(first / "model.safetensors") == TINY_GPT2_SHA256
    for name in ("config.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (again / name).read_bytes() == (first / name).read_bytes()


def test_tiny_gpt2_directory_holds_an_hf_model(tiny_data_dir):
    directory = ensure_tiny_gpt2(tiny_data_dir)
    assert directory == tiny_data_dir / "models" / "tiny-gpt2"
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    assert json.loads((directory / "config.json").read_text()) == TINY_GPT2_CONFIG


def test_tiny_gpt2_meta_points_at_the_generated_directory(tiny_data_dir):
    meta = resolve_model("tiny-gpt2", tiny_data_dir)
    assert meta.path == tiny_data_dir / "models" / "tiny-gpt2"


def test_tiny_gpt2_state_dict_is_generated_on_demand(tmp_path):
    meta = resolve_model("tiny-gpt2", tmp_path)
    assert meta.path is None
    state = load_state_dict(meta, tmp_path)
    assert tuple(state["transformer.wte.weight"].shape) == (50257, 64)
    assert tuple(state["transformer.wpe.weight"].shape) == (128, 64)
    assert tuple(state["transformer.h.1.mlp.c_fc.weight"].shape) == (64, 256)
    assert "transformer.h.2.ln_1.weight" not in state
    assert (tmp_path / "models" / "tiny-gpt2" / "model.safetensors").is_file()


def test_tiny_gpt2_weights_are_scaled_like_the_oracle(tiny_data_dir):
    state = load_state_dict(resolve_model("tiny-gpt2", tiny_data_dir), tiny_data_dir)
    wte = state["transformer.wte.weight"]
    gain = state["transformer.h.0.ln_1.weight"]
    assert abs(wte.std().item() - 0.25) < 0.01
    assert abs(gain.mean().item() - 1.0) < 0.1


def test_concurrent_generation_is_safe(tmp_path):
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_tiny_gpt2(tmp_path)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    target = tmp_path / "models" / "tiny-gpt2"
    assert results == [target, target]
    assert _sha256(target / "model.safetensors") == TINY_GPT2_SHA256
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny-gpt2"]


def test_tiny_gpt2_loads_in_transformers_with_finite_spread_logits(tiny_data_dir):
    transformers = pytest.importorskip("transformers")
    directory = ensure_tiny_gpt2(tiny_data_dir)
    model = transformers.GPT2LMHeadModel.from_pretrained(
        str(directory), attn_implementation="eager"
    )
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    ids = load_tokenizer(resolve_model("tiny-gpt2", tiny_data_dir)).encode(PROMPT)
    assert hf_tokenizer(PROMPT)["input_ids"] == ids
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    assert torch.isfinite(out.logits).all()
    assert out.logits.max() - out.logits.min() > 10
    sharpness = [a[0, :, 1:].max(-1).values.mean().item() for a in out.attentions]
    assert min(sharpness) > 0.5


def test_tiny_gpt2_hf_model_uses_our_weights(tiny_data_dir):
    transformers = pytest.importorskip("transformers")
    directory = ensure_tiny_gpt2(tiny_data_dir)
    model = transformers.GPT2LMHeadModel.from_pretrained(str(directory))
    ours = load_state_dict(resolve_model("tiny-gpt2", tiny_data_dir), tiny_data_dir)
    theirs = model.state_dict()
    assert torch.equal(theirs["lm_head.weight"], ours["transformer.wte.weight"])
    assert all(torch.equal(theirs[k], v) for k, v in ours.items())

"""Loading dtypes and checkpoint layouts (issue 12, families.md §0): a bf16 checkpoint is computed
in float32 and equals HF's float32 model of the same upcast weights; sharded safetensors and a
cached hub id (HF cache layout) load; ACTQ_DTYPE=bfloat16 / float16 computes in that dtype within
the tolerance the README states; a bad ACTQ_DTYPE stops the command at startup.

References are HF's AutoModelForCausalLM (float32, eager) and actq's own float32 pass of the same
checkpoint; the models are the tiny random ones of tests/family_models.py."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from tests.conftest import GOLDEN_DIR, _base_env, run_actq
from tests.family_models import build, load_hf
from tests.test_families_hf import PROMPT, _close, _engine_pass, _points
from worker.engine import load_model, run
from worker.engine.losses import LossSpec

# README "Model families": max |reduced - float32| over a tensor, relative to the tensor's largest
# float32 magnitude (activations, gradients, gradients of the norm scales: a sum over d that
# cancels), and the UI pair's loss (a logit difference) relative to max(|loss|, 1). Measured on
# these models (5 families x 2 seeds) the worst were bf16 0.045 / 0.093 / 0.33 / 0.135, fp16
# 0.005 / 0.009 / 0.014 / 0.032.
TOLERANCE = {
    "bfloat16": {"saved": 0.08, "grads": 0.15, "scale_grads": 0.5, "loss": 0.2},
    "float16": {"saved": 0.01, "grads": 0.02, "scale_grads": 0.03, "loss": 0.05},
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dtypes")
    names = ("llama", "llama-biases-tied", "neox-parallel")
    return {name: build(name, base / name, seed=5 + i) for i, name in enumerate(names)}


def _stored_dtypes(directory) -> set[torch.dtype]:
    out = set()
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            out |= {f.get_slice(k).get_dtype() for k in f.keys()}
    return out


def _weight_dtypes(model) -> set[torch.dtype]:
    w = model.weights
    tensors = [w.W_E, w.W_U, w.lnf_g, *w.w_out_row_norms]
    for lw in w.layers:
        tensors += [lw.w_qkv, lw.b_qkv, lw.w_o, lw.w_in, lw.w_out, lw.w_up, lw.ln1_g, lw.ln2_g]
    return {t.dtype for t in tensors if t is not None}


def _hf_logits(directory, tokens) -> torch.Tensor:
    with torch.no_grad():
        return load_hf(directory)(torch.tensor([tokens])).logits[0]


def test_bf16_checkpoint_computes_in_float32_and_equals_hf(dirs):
    directory = dirs["llama"]
    assert _stored_dtypes(directory) == {"BF16"}
    model = load_model(str(directory), device="cpu")
    assert _weight_dtypes(model) == {torch.float32}
    tokens = model.tokenizer.encode(PROMPT)
    ours = _engine_pass(model, tokens).saved[("logits", None)][0]
    _close(ours, _hf_logits(directory, tokens)[:, : model.meta.vocab_size], "logits")


def test_sharded_safetensors_load(dirs):
    directory = dirs["llama-biases-tied"]
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = load_model(str(directory), device="cpu")
    tokens = model.tokenizer.encode(PROMPT)
    ours = _engine_pass(model, tokens).saved[("logits", None)][0]
    _close(ours, _hf_logits(directory, tokens)[:, : model.meta.vocab_size], "logits")


def test_cached_hub_id_loads_from_the_hf_cache_layout(dirs, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(dirs["llama"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_model("someone/tiny-llama", device="cpu")
    assert model.name == "someone/tiny-llama"
    assert model.meta.family == "llama"
    tokens = model.tokenizer.encode(PROMPT)
    ours = _engine_pass(model, tokens).saved[("logits", None)][0]
    _close(ours, _hf_logits(dirs["llama"], tokens)[:, : model.meta.vocab_size], "logits")


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("name", ["llama", "neox-parallel"])
def test_reduced_dtype_is_within_the_stated_tolerance(dirs, name, dtype, monkeypatch):
    reference = load_model(str(dirs[name]), device="cpu")
    monkeypatch.setenv("ACTQ_DTYPE", dtype)
    reduced = load_model(str(dirs[name]), device="cpu")
    assert _weight_dtypes(reduced) == {getattr(torch, dtype)}
    tokens = reference.tokenizer.encode(PROMPT)
    target = reference.tokenizer.encode_plain(" Rome")[0]
    distractor = reference.tokenizer.encode_plain(" Paris")[0]
    loss = LossSpec("logit_diff", (target,), (distractor,))
    ref, low = (_engine_pass(m, tokens, loss=loss, grads=True) for m in (reference, reduced))
    tol = TOLERANCE[dtype]
    for key in _points(reference):
        for kind in ("saved", "grads"):
            if key not in getattr(ref, kind):
                continue
            a, b = getattr(ref, kind)[key][0], getattr(low, kind)[key][0]
            assert b.dtype == getattr(torch, dtype), (kind, key, b.dtype)
            bound = (
                tol["scale_grads"] if kind == "grads" and key[0].endswith("scale") else tol[kind]
            )
            _close(b.float(), a, (kind, key), rel=bound)
    # the whole TDB UI pair answers, its losses within the stated tolerance
    request = json.loads(
        (GOLDEN_DIR / "cases" / "061-tdb-ui-pair-clean-and-ablated.json").read_text()
    )["request"]
    answers = [
        run("batched_tdb", request, m)["inferenceSubResponses"] for m in (reference, reduced)
    ]
    for a, b in zip(*answers, strict=True):
        a_loss = a["inferenceResponse"]["inferenceAndTokenData"]["loss"]
        b_loss = b["inferenceResponse"]["inferenceAndTokenData"]["loss"]
        assert abs(b_loss - a_loss) <= tol["loss"] * max(abs(a_loss), 1.0), (a_loss, b_loss)


def test_bad_dtype_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="ACTQ_DTYPE='float8'.*float32, bfloat16, float16"):
        load_model("tiny-gpt2", device="cpu", dtype="float8")
    env = {**_base_env(tmp_path), "ACTQ_DTYPE": "float8"}
    for command in (("run", "model_info"), ("worker",)):
        out = run_actq(*command, env=env, timeout=120)
        assert out.returncode != 0, command
        err = out.stderr.decode()
        assert "dtype" in err and "'float32', 'bfloat16' or 'float16'" in err, err[-2000:]

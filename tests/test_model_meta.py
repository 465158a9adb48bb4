"""Model specs resolve to the right directory, name, revision and shape, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.errors import NotFoundError, UnsupportedError
from models.model_meta import (
    TINY_GPT2_REVISION,
    default_data_dir,
    resolve_model,
    tiny_gpt2_dir,
)
from tests.shared_dir import ORACLE_MODEL

GOLDEN = ORACLE_MODEL
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_cache(root: Path, repo_id: str, commit: str = COMMIT) -> Path:
    """A Hugging Face cache layout holding the golden model as ``repo_id``; returns the snapshot."""
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in GOLDEN.iterdir():
        (snapshot / file.name).symlink_to(file)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def _copy_with_config(tmp_path: Path, **changes) -> Path:
    directory = tmp_path / "edited-model"
    directory.mkdir()
    for name in ("vocab.json", "merges.txt", "model.safetensors"):
        (directory / name).symlink_to(GOLDEN / name)
    config = json.loads((GOLDEN / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_golden_directory_is_named_after_its_last_component():
    meta = resolve_model(str(GOLDEN))
    assert meta.name == "oracle-gpt2-tiny"
    assert meta.source == str(GOLDEN)
    assert meta.path == GOLDEN.resolve()
    assert meta.builtin is False


def test_golden_directory_shape_comes_from_its_config():
    meta = resolve_model(str(GOLDEN))
    shape = (meta.n_layers, meta.n_heads, meta.d_model, meta.d_head, meta.d_mlp, meta.n_ctx)
    assert shape == (3, 4, 64, 16, 256, 64)
    assert meta.vocab_size == 50257
    assert meta.activation == "gelu_new"
    assert meta.layer_norm_epsilon == 1e-5


def test_directory_revision_is_a_hash_of_the_weights(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(GOLDEN, copy)
    original, copied = resolve_model(str(GOLDEN)), resolve_model(str(copy))
    assert original.revision.startswith("sha256:")
    assert copied.revision == original.revision
    assert copied.name == "copy"


def test_results_are_cached_per_spec():
    assert resolve_model(str(GOLDEN)) is resolve_model(str(GOLDEN))


def test_name_equals_dir_sets_the_served_name():
    meta = resolve_model(f"my-model={GOLDEN}")
    assert meta.name == "my-model"
    assert meta.path == GOLDEN.resolve()
    assert meta.n_layers == 3


def test_tiny_gpt2_before_generation_has_constant_meta_and_no_path(tmp_path):
    meta = resolve_model("tiny-gpt2", tmp_path)
    assert meta.name == "tiny-gpt2"
    assert meta.path is None
    assert meta.builtin is True
    assert meta.revision == TINY_GPT2_REVISION
    shape = (meta.n_layers, meta.n_heads, meta.d_model, meta.d_head, meta.d_mlp, meta.n_ctx)
    assert shape == (2, 4, 64, 16, 256, 128)
    assert meta.vocab_size == 50257


def test_tiny_gpt2_path_appears_once_its_directory_exists(tmp_path):
    directory = tiny_gpt2_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    assert directory == tmp_path / "models" / "tiny-gpt2"
    assert resolve_model("tiny-gpt2", tmp_path).path == directory


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTQ_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("ACTQ_DATA_DIR")
    assert default_data_dir() == Path.home() / ".actq"


def test_hub_id_resolves_from_the_local_cache(monkeypatch, tmp_path):
    snapshot = _fake_hub_cache(tmp_path, "openai-community/gpt2")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    meta = resolve_model("openai-community/gpt2")
    assert meta.name == "openai-community/gpt2"
    assert meta.path == snapshot
    assert meta.revision == COMMIT
    assert meta.n_layers == 3


def test_short_hub_id_finds_the_organisation_spelling(monkeypatch, tmp_path):
    snapshot = _fake_hub_cache(tmp_path, "openai-community/gpt2")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    meta = resolve_model("gpt2")
    assert (meta.name, meta.path) == ("gpt2", snapshot)


def test_hf_home_locates_the_cache(monkeypatch, tmp_path):
    snapshot = _fake_hub_cache(tmp_path / "hub", "gpt2-medium")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert resolve_model("gpt2-medium").path == snapshot


def test_unknown_hub_id_is_not_found_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(NotFoundError) as caught:
        resolve_model("no-such-org/no-such-model")
    assert caught.value.status == 404
    assert "Hugging Face cache" in caught.value.message
    assert "local directory" in caught.value.message


def test_missing_directory_is_not_found():
    with pytest.raises(NotFoundError, match="does not exist"):
        resolve_model("/nonexistent/model-dir")


def test_directory_without_config_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="config.json"):
        resolve_model(str(tmp_path))


def test_unknown_model_type_is_unsupported(tmp_path):
    directory = _copy_with_config(tmp_path, model_type="bert")
    with pytest.raises(UnsupportedError, match="model_type 'bert'") as caught:
        resolve_model(str(directory))
    assert caught.value.status == 422
    assert caught.value.path == "model_type"


def test_inverse_layer_attention_scaling_is_unsupported(tmp_path):
    directory = _copy_with_config(tmp_path, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(UnsupportedError):
        resolve_model(str(directory))


def test_explicit_n_inner_sets_d_mlp(tmp_path):
    directory = _copy_with_config(tmp_path, n_inner=100)
    assert resolve_model(str(directory)).d_mlp == 100


def test_model_meta_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, models.model_meta, models.tokenizer; "
        "print(any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""Autoencoders in the engine: engine.md §10 invariants extended to latents, and the loaders on
good and malformed files (each malformed file is a clear start-up error)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.autoencoder_files import AutoencoderFileError, read_autoencoder_info
from tests.shared_dir import GOLDEN

engine = pytest.importorskip("worker.engine")

TDB_DIR = GOLDEN / "autoencoders"
SAELENS_DIR = GOLDEN / "autoencoders-saelens"
PROMPT = "Paris is the capital of France, and Berlin is the capital of Germany."


def close(a, b, rel=1e-4, abs_=1e-5, path=""):
    """Equal up to rounding (engine.md §10 "≈"), key by key."""
    if isinstance(b, dict):
        assert list(a) == list(b), path
        for k in b:
            if k not in ("inferenceTime", "memoryUsedBefore", "memoryUsedAfter"):
                close(a[k], b[k], rel, abs_, f"{path}.{k}")
    elif isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, rel, abs_, f"{path}.{i}")
    elif isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=abs_), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def plain(golden_model_dir):
    return engine.load_model(str(golden_model_dir), "cpu")


@pytest.fixture(scope="module")
def both(golden_model_dir):
    return engine.load_model(
        str(golden_model_dir),
        "cpu",
        mlp_autoencoder=str(TDB_DIR / "ae-mlp-post-act-tiny"),
        attention_autoencoder=str(TDB_DIR / "ae-resid-delta-attn-tiny"),
    )


def tdb_request(**extra) -> dict:
    spec = {
        "prompt": PROMPT,
        "targetTokens": [" Germany"],
        "distractorTokens": [" France"],
        "componentTypeForMlp": "neuron",
        "componentTypeForAttention": "attention_head",
        "topAndBottomKForNodeTable": 5,
        "hideEarlyLayersWhenAblating": False,
        "nodeAblations": None,
        "upstreamNodeToTrace": None,
        "downstreamNodeToTrace": None,
    }
    return {"subRequests": [{**spec, **extra}]}


def ds(dst: str, layer: int, index: int, ablations=None, trace=None) -> dict:
    return {
        "inferenceRequestSpec": {
            "prompt": PROMPT,
            "ablationSpecs": ablations,
            "lossFnConfig": None,
            "traceConfig": trace,
            "activationIndexForWithinLayerGrad": None,
        },
        "derivedScalarsRequestSpec": {
            "dst": dst,
            "layerIndex": layer,
            "activationIndex": index,
            "normalizeActivationsUsingNeuronRecord": None,
            "passType": "forward",
            "numTopTokens": None,
        },
    }


def activations(model, request) -> list[float]:
    return engine.run("derived_scalars", request, model)["derivedScalarsResponseData"][
        "activations"
    ]


# -- invariants ----------------------------------------------------------------------------------


def test_loaded_aes_change_no_neuron_or_head_value_beyond_rounding(plain, both):
    """§9.4: injected into every pass, the AEs change values only by rounding (nothing ablated)."""
    close(
        engine.run("batched_tdb", tdb_request(), both),
        engine.run("batched_tdb", tdb_request(), plain),
    )
    for layer in range(3):
        close(
            activations(both, ds("mlp_post_act", layer, 7)),
            activations(plain, ds("mlp_post_act", layer, 7)),
        )


def test_ablating_a_latent_to_its_own_value_changes_nothing(both):
    latents = activations(both, ds("online_mlp_autoencoder_latent", 1, 126))
    t = max(range(len(latents)), key=lambda i: latents[i])
    assert latents[t] > 0
    ablation = [
        {
            "index": {
                "activationLocationType": "online_mlp_autoencoder_latent",
                "tensorIndices": [t, 126],
                "layerIndex": 1,
                "passType": "forward",
            },
            "value": latents[t],
        }
    ]
    for layer in (1, 2):
        close(
            activations(both, ds("mlp_post_act", layer, 100, ablations=ablation)),
            activations(both, ds("mlp_post_act", layer, 100)),
        )
    zeroed = [{**ablation[0], "value": 0.0}]
    # TDB quirk (§9.4): the AE's own input is saved before substitution, so only layer 2 moves
    assert activations(both, ds("mlp_post_act", 1, 100, ablations=zeroed)) == pytest.approx(
        activations(both, ds("mlp_post_act", 1, 100))
    )
    assert activations(both, ds("mlp_post_act", 2, 100, ablations=zeroed)) != pytest.approx(
        activations(both, ds("mlp_post_act", 2, 100))
    )


def test_online_and_offline_latents_agree_for_an_mlp_post_act_ae(both):
    for layer in range(3):
        close(
            activations(both, ds("mlp_autoencoder_latent", layer, 126)),
            activations(both, ds("online_mlp_autoencoder_latent", layer, 126)),
        )


def test_a_latent_trace_back_propagates_the_pre_activation_of_the_hooked_input(both):
    """§10 item 19 / 23: the traced scalar is encode_pre_act of the hooked mlp_post_act row."""
    t, j, layer = 5, 126, 1
    trace = {
        "nodeIndex": {
            "nodeType": "mlp_autoencoder_latent",
            "tensorIndices": [t, j],
            "layerIndex": layer,
            "passType": "forward",
        },
        "preOrPostAct": "pre",
        "detachLayerNormScale": True,
        "attentionTraceType": None,
        "downstreamTraceConfig": None,
    }
    answer = engine.run("derived_scalars", ds("mlp_act_times_grad", 0, 3, trace=trace), both)
    traced = answer["inferenceAndTokenData"]["activationValueForBackwardPass"]
    post = torch.tensor([activations(both, ds("mlp_post_act", layer, i))[t] for i in range(256)])
    expected = float(both.autoencoders.mlp.layers[layer].encode_pre_act(post)[j])
    assert traced == pytest.approx(expected, rel=1e-4, abs=1e-5)
    later = engine.run("derived_scalars", ds("mlp_act_times_grad", 2, 3, trace=trace), both)
    assert set(later["derivedScalarsResponseData"]["activations"]) == {0.0}  # downstream of r


def test_model_info_reports_the_aes(both, plain):
    info = engine.run("model_info", None, both)
    assert (info["mlpAutoencoderName"], info["attentionAutoencoderName"]) == (
        "ae-mlp-post-act-tiny",
        "ae-resid-delta-attn-tiny",
    )
    assert engine.run("model_info", None, plain)["hasMlpAutoencoder"] is False


# -- loaders -------------------------------------------------------------------------------------


@pytest.mark.parametrize("root", [TDB_DIR, SAELENS_DIR], ids=["tdb", "saelens"])
def test_the_api_reads_the_same_facts_as_the_engine_without_torch(root, golden_model_dir):
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        kind = "attention" if "attn" in folder.name else "mlp"
        model = engine.load_model(
            str(golden_model_dir), "cpu", **{f"{kind}_autoencoder": str(folder)}
        )
        assert model.autoencoders.info().get(kind) == read_autoencoder_info(str(folder))


def test_tdb_and_saelens_files_give_the_same_autoencoder():
    from worker.engine.autoencoders import load_autoencoder

    tdb = load_autoencoder(str(TDB_DIR / "ae-resid-delta-mlp-topk-tiny"))
    sae = load_autoencoder(str(SAELENS_DIR / "ae-resid-delta-mlp-topk-tiny"))
    assert (tdb.file_format, sae.file_format, tdb.input_dst, sae.input_dst) == (
        "tdb", "saelens", "resid_delta_mlp", "resid_delta_mlp",
    )  # fmt: skip
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    for layer in (0, 1, 2):
        a, b = tdb.layers[layer], sae.layers[layer]
        assert torch.allclose(a.encode(x), b.encode(x))
        assert (a.encode(x) > 0).sum(dim=1).tolist() == [8] * 5  # TopK k 8


def test_tdb_omission_rebuilds_with_zero_pre_bias_and_relu():
    from worker.engine.autoencoders import load_autoencoder

    ae = load_autoencoder(str(TDB_DIR / "ae-resid-delta-mlp-tiny"))
    assert (ae.omitted_latents, ae.n_latents) == (2, 254)
    assert all(
        not bool(part.pre_bias.any()) and part.activation == "relu" for part in ae.layers.values()
    )
    assert load_autoencoder(str(SAELENS_DIR / "ae-resid-delta-mlp-tiny")).n_latents == 256


def _copy(src, tmp_path, name="ae-mlp-post-act-broken"):
    target = tmp_path / name
    shutil.copytree(src, target)
    return target


def _load(golden_model_dir, folder, kind="mlp"):
    return engine.load_model(str(golden_model_dir), "cpu", **{f"{kind}_autoencoder": str(folder)})


def test_malformed_tdb_files_are_clear_start_up_errors(tmp_path, golden_model_dir):
    folder = _copy(TDB_DIR / "ae-mlp-post-act-tiny", tmp_path)
    state = torch.load(folder / "1.pt", weights_only=True)
    del state["decoder.weight"]
    torch.save(state, folder / "1.pt")
    with pytest.raises(AutoencoderFileError, match="lacks the tensor.*decoder.weight"):
        _load(golden_model_dir, folder)
    state["decoder.weight"] = torch.zeros(256, 500)
    torch.save(state, folder / "1.pt")
    with pytest.raises(AutoencoderFileError, match="inconsistent widths"):
        _load(golden_model_dir, folder)
    (folder / "1.pt").write_bytes(b"not a state dict")
    with pytest.raises(AutoencoderFileError, match="not a readable state dict"):
        _load(golden_model_dir, folder)


def test_an_ae_must_fit_its_slot_and_the_model(tmp_path, golden_model_dir):
    with pytest.raises(AutoencoderFileError, match="cannot be the attention autoencoder"):
        _load(golden_model_dir, TDB_DIR / "ae-mlp-post-act-tiny", "attention")
    folder = _copy(TDB_DIR / "ae-mlp-post-act-tiny", tmp_path)
    (folder / "ae.json").write_text(json.dumps({"tdbInputDst": "resid_delta_mlp"}))
    with pytest.raises(AutoencoderFileError, match="d_in 256 does not match resid_delta_mlp"):
        _load(golden_model_dir, folder)
    (folder / "ae.json").unlink()
    anonymous = folder.rename(tmp_path / "my-ae")
    with pytest.raises(AutoencoderFileError, match="cannot tell what autoencoder"):
        _load(golden_model_dir, anonymous)
    shutil.copy(anonymous / "1.pt", anonymous / "7.pt")
    (anonymous / "ae.json").write_text(json.dumps({"tdbInputDst": "mlp_post_act"}))
    with pytest.raises(AutoencoderFileError, match="has layer 7"):
        _load(golden_model_dir, anonymous)


def _cfg(folder):
    return json.loads((folder / "cfg.json").read_text())


def test_malformed_saelens_files_are_clear_start_up_errors(tmp_path, golden_model_dir):
    folder = _copy(SAELENS_DIR / "ae-mlp-post-act-tiny", tmp_path)
    layer = folder / "layer-1"
    for field, value, message in (
        ("architecture", "gated", "architecture 'gated' is not supported"),
        ("normalize_activations", "expected_average_only_in", "normalize_activations"),
        ("reshape_activations", "hook_z", "reshape_activations"),
    ):
        cfg = _cfg(layer)
        original = cfg.get(field)
        (layer / "cfg.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(AutoencoderFileError, match=message):
            _load(golden_model_dir, folder)
        (layer / "cfg.json").write_text(json.dumps({**cfg, field: original}))
    cfg = _cfg(layer)
    cfg["metadata"]["hook_name"] = "blocks.1.hook_resid_pre"
    (layer / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(AutoencoderFileError, match="hook_name 'blocks.1.hook_resid_pre'"):
        _load(golden_model_dir, folder)
    cfg["metadata"]["hook_name"] = "blocks.1.mlp.hook_post"
    (layer / "cfg.json").write_text(json.dumps(cfg))
    tensors = load_file(str(layer / "sae_weights.safetensors"))
    save_file(
        {k: v for k, v in tensors.items() if k != "W_dec"}, str(layer / "sae_weights.safetensors")
    )
    with pytest.raises(AutoencoderFileError, match="lacks the tensor.*W_dec"):
        _load(golden_model_dir, folder)


def test_saelens_jumprelu_flat_cfg_and_no_pre_bias_on_input(tmp_path, golden_model_dir):
    """A pre-6 flat cfg.json, architecture jumprelu, apply_b_dec_to_input false."""
    src = SAELENS_DIR / "ae-mlp-post-act-tiny" / "layer-1"
    target = tmp_path / "jump" / "layer-1"
    shutil.copytree(src, target)
    cfg = _cfg(target)
    flat = {k: v for k, v in cfg.items() if k != "metadata"} | cfg["metadata"]
    flat.update(architecture="jumprelu", apply_b_dec_to_input=False)
    (target / "cfg.json").write_text(json.dumps(flat))
    tensors = load_file(str(target / "sae_weights.safetensors"))
    tensors["threshold"] = torch.full((512,), 0.2)
    save_file(tensors, str(target / "sae_weights.safetensors"))
    model = _load(golden_model_dir, tmp_path / "jump")
    part = model.autoencoders.mlp.layers[1]
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(1)).abs()
    pre = x @ tensors["W_enc"] + tensors["b_enc"]  # b_dec not subtracted
    assert torch.allclose(part.encode(x), torch.relu(pre) * (pre > 0.2))
    assert sorted(model.autoencoders.mlp.layers) == [1]
    assert read_autoencoder_info(str(tmp_path / "jump")).layers == (1,)


def test_activation_residual_grad_latents_need_a_trace(both):
    from models.errors import RequestValidationError

    request = ds("online_mlp_autoencoder_write_to_final_activation_residual_grad", 1, 126)
    with pytest.raises(RequestValidationError) as raised:
        engine.run("derived_scalars", request, both)
    assert raised.value.path == "derivedScalarsRequestSpec.dst"
    backward = ds("online_mlp_autoencoder_latent", 1, 126)
    backward["derivedScalarsRequestSpec"]["passType"] = "backward"
    backward["inferenceRequestSpec"]["lossFnConfig"] = {
        "name": "logit_diff",
        "targetTokens": [" Germany"],
        "distractorTokens": [" France"],
    }
    with pytest.raises(RequestValidationError) as raised:
        engine.run("derived_scalars", backward, both)
    assert raised.value.path == "derivedScalarsRequestSpec.passType"

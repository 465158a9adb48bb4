"""``values: "mean"`` for attention heads and AE latents: each point's value is the clean run's
mean over tokens of the activation its ablation overwrites, checked against the same mean taken
from Hugging Face's GPT2LMHeadModel (attention probabilities, MLP activations) and the golden
autoencoder's own weights, not from actq's engine."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from models.store.tables import Job
from tests.shared_dir import GOLDEN
from tests.test_sweeps import _run, _submit

BASE = json.loads((Path(__file__).parents[1] / "examples" / "batched_tdb.json").read_text())
PROMPT = BASE["subRequests"][0]["prompt"]
MLP_AE = GOLDEN / "autoencoders" / "ae-mlp-post-act-tiny"


def _hf_run(golden_model_dir, hooked_layers=()):
    """The prompt through HF's model: its attention probabilities per layer ([H, T, T]) and the
    MLP activations (``mlp.act``'s output, [T, d_mlp]) of ``hooked_layers``."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    # eager attention: the path that returns the probabilities
    hf = GPT2LMHeadModel.from_pretrained(
        str(golden_model_dir), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokens = AutoTokenizer.from_pretrained(str(golden_model_dir))(PROMPT, return_tensors="pt")
    acts = {}
    handles = [
        hf.transformer.h[layer].mlp.act.register_forward_hook(
            lambda _m, _i, out, layer=layer: acts.__setitem__(layer, out[0].double())
        )
        for layer in hooked_layers
    ]
    try:
        with torch.no_grad():
            out = hf(tokens.input_ids, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    return [a[0].double() for a in out.attentions], acts


def _used_values(app, view) -> list[float]:
    """The value each point's stored request sets its node to (its last node ablation)."""
    with app.extensions["actq.sessionmaker"]() as session:
        jobs = [session.get(Job, point["run"].split("/")[0]) for point in view["points"]]
        return [job.request["subRequests"][0]["nodeAblations"][-1]["value"] for job in jobs]


def test_head_means_are_the_clean_attention_means_over_query_and_key_tokens(
    app, client, engine_model, golden_model_dir
):
    # the base ablates head 2 of layer 1 at token 3 (0.5 for every key, the masked ones too):
    # the clean run is the base's, so that head's mean moves away from 1/T, the others' do not
    base = copy.deepcopy(BASE)
    own = {"nodeType": "attention_head", "tensorIndices": [3, 0, 2], "layerIndex": 1}
    base["subRequests"][0]["nodeAblations"] = [
        {"nodeIndex": {**own, "passType": "forward"}, "value": 0.5}
    ]
    grid = {"heads": [1], "positions": [0, "last"], "values": "mean"}
    sweep = _submit(client, {"base": base, "grid": grid})
    assert _run(app, engine_model, sweep["id"]) == "finished"
    view = client.get(f"/v1/sweeps/{sweep['id']}").get_json()

    probs = _hf_run(golden_model_dir)[0][1]  # layer 1: [H, T, T]
    probs[2, 3, :] = 0.5  # what the base's own ablation writes
    expected = probs.mean(dim=(1, 2))
    n_tokens = probs.shape[-1]
    assert expected[2].item() > 1.2 / n_tokens  # the base's ablation shows
    points = [(p["nodeIndex"], p["position"]) for p in view["points"]]
    assert points == [(h, t) for h in range(4) for t in (0, n_tokens - 1)]
    for point, used in zip(view["points"], _used_values(app, view), strict=True):
        assert point["value"] == pytest.approx(expected[point["nodeIndex"]].item(), rel=1e-5)
        assert used == point["value"]
    assert all(p["status"] == "finished" and p["loss"] is not None for p in view["points"])


@pytest.fixture
def ae_app(tmp_path, golden_model_dir):
    import migrations
    from api.app import create_app

    url = f"sqlite:///{tmp_path / 'ae.db'}"
    migrations.upgrade(url)
    return create_app(
        {
            "TESTING": True,
            "data_dir": tmp_path,
            "database_url": url,
            "broker_url": f"filesystem://{tmp_path / 'broker'}",
            "model": str(golden_model_dir),
            "mlp_autoencoder": str(MLP_AE),
        }
    )


def _ae_latents(layer: int, acts: torch.Tensor) -> torch.Tensor:
    """The golden AE's latents for ``acts`` ([T, n]): ReLU(W_enc (x - pre_bias) + latent_bias)."""
    ae = torch.load(MLP_AE / f"{layer}.pt")
    assert ae["activation"] == "ReLU"
    x = acts - ae["pre_bias"].double()
    return torch.relu(x @ ae["encoder.weight"].double().T + ae["latent_bias"].double())


def test_latent_means_are_the_clean_latent_means_over_tokens(ae_app, golden_model_dir):
    from worker.engine import load_model

    client = ae_app.test_client()
    latents = [
        {"nodeType": "mlp_autoencoder_latent", "layer": 0, "index": 3},
        {"nodeType": "mlp_autoencoder_latent", "layer": 2, "index": 10},
    ]
    grid = {"latents": latents, "positions": [2, "last"], "values": "mean"}
    sweep = _submit(client, {"base": BASE, "grid": grid})
    model = load_model(str(golden_model_dir), "cpu", mlp_autoencoder=str(MLP_AE))
    assert _run(ae_app, model, sweep["id"]) == "finished"
    view = client.get(f"/v1/sweeps/{sweep['id']}").get_json()

    acts = _hf_run(golden_model_dir, hooked_layers=(0, 2))[1]
    expected = {
        (x["layer"], x["index"]): _ae_latents(x["layer"], acts[x["layer"]])[:, x["index"]].mean()
        for x in latents
    }
    assert all(abs(v.item()) > 1e-3 for v in expected.values())  # latents that fire
    assert len(view["points"]) == 4
    for point, used in zip(view["points"], _used_values(ae_app, view), strict=True):
        mean = expected[(point["layer"], point["nodeIndex"])].item()
        assert point["value"] == pytest.approx(mean, rel=1e-5)
        assert used == point["value"]
    assert all(p["status"] == "finished" for p in view["points"])

"""The clean run's means a sweep's ``values: "mean"`` sets its nodes to.

A node ablation overwrites one activation (engine.md §5.5); its mean is that activation's mean
over the prompt's tokens in the clean run: the base request, its own ablations included, without
the point's.

* An MLP neuron: ``mlp.post_act[:, n]``, the mean of its T values.
* An AE latent: the served autoencoder's latent ``[:, j]`` at the node's layer
  (``online_*autoencoder_latent``, the location its ablation overwrites), the mean of its T values.
* An attention head: its ablation writes one value into every key of query ``t``'s row of
  ``attn.qk_probs[:, :, h]``, the causally masked keys too, so the mean is over that tensor's
  T x T query and key tokens, masked entries included. Each clean row of probabilities sums to 1,
  so this is 1/T up to rounding (the ablated row becomes uniform attention over the prompt)
  unless the base itself ablates that head's rows.

Neurons and latents come from one derived-scalars pass (``mlp_post_act`` and the latent DSTs,
vectors over tokens); heads from one forward pass that keeps ``attn.qk_probs`` whole, since the
derived scalars show a head's probabilities only below the diagonal, which misses what a base's
own head ablation wrote above it.
"""

from __future__ import annotations

import torch

from models.checks.sweeps import ABLATED_LOCATION
from models.wire import protocol as p
from worker.engine.inference import run_pass
from worker.engine.pipeline import run_batch
from worker.engine.planning import plan_sub_request
from worker.engine.view import ElementView

Node = tuple[str, int, int]  # (node type, layer, index)

PROBS = "attn.qk_probs"


def clean_means(base_endpoint: str, base_request: dict, nodes: list[Node], model) -> dict:
    """``{node: mean}`` for each ``(node type, layer, index)`` over the base's clean run."""
    from worker.sweep_passes import group_of

    subs, paths = group_of(base_endpoint, base_request, model)
    heads = [node for node in nodes if node[0] == "attention_head"]
    others = [node for node in nodes if node[0] != "attention_head"]
    with torch.inference_mode(False):
        means = _vector_means(subs[0].inference_request_spec, others, model) if others else {}
        if heads:
            means.update(_head_means(subs[0], paths[0], heads, model))
    return means


def _vector_means(spec, nodes: list[Node], model) -> dict:
    specs = {
        f"mean{i}": p.DerivedScalarsRequestSpec(
            dst="mlp_post_act" if node_type == "mlp_neuron" else ABLATED_LOCATION[node_type],
            layer_index=layer,
            activation_index=index,
        )
        for i, (node_type, layer, index) in enumerate(nodes)
    }
    sub = p.InferenceSubRequest(inference_request_spec=spec, processing_request_spec_by_name=specs)
    data = run_batch([sub], model)["inferenceSubResponses"][0]["processingResponseDataByName"]
    return {
        node: sum(values) / len(values)
        for i, node in enumerate(nodes)
        if (values := data[f"mean{i}"]["activations"])
    }


def _head_means(sub, paths, heads: list[Node], model) -> dict:
    plan = plan_sub_request(sub, paths, model)
    layers = {layer for _, layer, _ in heads}
    result = run_pass(
        model.weights,
        [plan.element],
        {(PROBS, layer) for layer in layers},
        set(),
        False,
        model.device,
        model.autoencoders.all(),
    )
    view = ElementView(model.weights, result.hooks, 0, result.lengths[0], None)
    by_layer = {layer: view.fwd(PROBS, layer).double().mean(dim=(0, 1)) for layer in layers}
    return {(kind, layer, h): float(by_layer[layer][h]) for kind, layer, h in heads}

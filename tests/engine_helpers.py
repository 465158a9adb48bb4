"""Shared fixtures and helpers for the engine invariant tests (engine.md §10, protocol.md §8).

Models are loaded once per test session (the golden oracle model and the built-in tiny-gpt2) and
kept in a module cache, so every test module that imports the fixtures shares them. Requests are
built as wire JSON and sent through `worker.engine.run`, the engine's public interface; full
derived-scalar tensors are read back from a multiple-top-k spec with `topAndBottomK: null`, which
lists every element.

`Reference` is an independent GPT-2 forward pass written here from the Hugging Face state dict: it
is what the engine's gradients are compared with (it can detach a layer norm's scale and stop
gradients through Q, K or V, as the spec's reference computations do).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# --- models -------------------------------------------------------------------------------------


def shared_dir() -> Path:
    """The shared folder (golden cases, spec): $ACTQ_SHARED_DIR or the checkout's sibling."""
    env = os.environ.get("ACTQ_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def golden_dir() -> Path:
    return shared_dir() / "golden" / "oracle-gpt2-tiny"


_CACHE: dict[str, object] = {}


def _cached(key: str, build):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def _tiny_data_dir(tmp_path_factory) -> Path:
    return _cached("tiny-data-dir", lambda: tmp_path_factory.mktemp("actq-engine-data"))


@pytest.fixture(scope="module")
def golden():
    """The golden oracle model (3 layers, 4 heads, d 64) loaded by the engine on the CPU."""
    if not golden_dir().is_dir():
        pytest.skip(f"golden model not found at {golden_dir()}")
    from worker.engine import load_model

    return _cached("golden", lambda: load_model(str(golden_dir()), "cpu"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The built-in tiny-gpt2 (2 layers), generated into a session temporary data dir."""
    from worker.engine import load_model

    data_dir = _tiny_data_dir(tmp_path_factory)
    return _cached("tiny", lambda: load_model("tiny-gpt2", "cpu", data_dir=data_dir))


def tiny_dir(tmp_path_factory) -> Path:
    from models.model_meta import tiny_gpt2_dir

    return tiny_gpt2_dir(_tiny_data_dir(tmp_path_factory))


def hf_model(directory: Path):
    """`GPT2LMHeadModel.from_pretrained` on a local directory, float32, eval mode (cached)."""

    def build():
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(str(directory), dtype=torch.float32)
        return model.eval()

    return _cached(f"hf:{directory}", build)


@pytest.fixture(scope="module")
def golden_hf():
    return hf_model(golden_dir())


@pytest.fixture(scope="module")
def golden_ref(golden_hf):
    return Reference.from_hf(golden_hf)


# --- tolerances ---------------------------------------------------------------------------------

RTOL, ATOL = 1e-4, 1e-5


def assert_close(actual, expected, rtol: float = RTOL, atol: float = ATOL, msg: str = "") -> None:
    """Element-wise |a - e| <= atol + rtol * |e| (engine.md §10's "≈"), with a useful message."""
    a = torch.as_tensor(actual, dtype=torch.float64)
    e = torch.as_tensor(expected, dtype=torch.float64)
    assert a.shape == e.shape, f"{msg} shape {tuple(a.shape)} != {tuple(e.shape)}"
    bad = (a - e).abs() > atol + rtol * e.abs()
    if bool(bad.any()):
        i = tuple(int(x) for x in torch.nonzero(bad)[0])
        worst = float((a - e).abs().max())
        raise AssertionError(
            f"{msg} {int(bad.sum())} of {a.numel()} entries differ; first at {i}: "
            f"actual {float(a[i])!r} expected {float(e[i])!r}; max abs diff {worst:.3g}"
        )


# --- request builders (wire JSON) ---------------------------------------------------------------


def logit_diff(targets: list[str], distractors: list[str] | None = None) -> dict:
    return {"name": "logit_diff", "targetTokens": targets, "distractorTokens": distractors}


LN_F_ABLATION = {
    "index": {
        "activationLocationType": "resid.ln_f.scale",
        "tensorIndices": ["All", "All"],
        "layerIndex": None,
        "passType": "backward",
    },
    "value": 0.0,
}


def ablation(
    location: str, indices: list, layer: int | None, value: float, backward: bool = False
) -> dict:
    return {
        "index": {
            "activationLocationType": location,
            "tensorIndices": list(indices),
            "layerIndex": layer,
            "passType": "backward" if backward else "forward",
        },
        "value": value,
    }


def node(node_type: str, indices: list[int], layer: int | None) -> dict:
    return {
        "nodeType": node_type,
        "tensorIndices": list(indices),
        "layerIndex": layer,
        "passType": "forward",
    }


def trace(
    node_index: dict, post: bool, detach: bool, trace_type: str | None = None, downstream=None
) -> dict:
    return {
        "nodeIndex": node_index,
        "preOrPostAct": "post" if post else "pre",
        "detachLayerNormScale": detach,
        "attentionTraceType": trace_type,
        "downstreamTraceConfig": downstream,
    }


def inference_spec(
    prompt: str, loss: dict | None = None, ablations: list | None = None, trace_config=None
) -> dict:
    return {
        "prompt": prompt,
        "ablationSpecs": ablations,
        "lossFnConfig": loss,
        "traceConfig": trace_config,
        "activationIndexForWithinLayerGrad": None,
    }


def mtk(
    groups: dict[str, list[str]],
    k: int | None = None,
    token_index: int | None = None,
    keep: list[str] | None = None,
    pass_type: str = "forward",
) -> dict:
    return {
        "dstListByGroupId": groups,
        "tokenIndex": token_index,
        "topAndBottomK": k,
        "passType": pass_type,
        "dimensionsToKeepForIntermediateSum": (
            ["sequence_tokens", "attended_to_sequence_tokens"] if keep is None else keep
        ),
    }


def ds(
    dst: str, layer: int | None, index: int, pass_type: str = "forward", num_top_tokens=None
) -> dict:
    return {
        "dst": dst,
        "layerIndex": layer,
        "activationIndex": index,
        "normalizeActivationsUsingNeuronRecord": None,
        "passType": pass_type,
        "numTopTokens": num_top_tokens,
    }


def sub_request(spec: dict, processing: dict) -> dict:
    return {"inferenceRequestSpec": spec, "processingRequestSpecByName": processing}


def tdb_spec(
    prompt: str,
    targets=(),
    distractors=(),
    k: int = 5,
    ablations=None,
    upstream=None,
    downstream=None,
) -> dict:
    return {
        "prompt": prompt,
        "targetTokens": list(targets),
        "distractorTokens": list(distractors),
        "componentTypeForMlp": "neuron",
        "componentTypeForAttention": "attention_head",
        "topAndBottomKForNodeTable": k,
        "hideEarlyLayersWhenAblating": False,
        "nodeAblations": ablations,
        "upstreamNodeToTrace": upstream,
        "downstreamNodeToTrace": downstream,
    }


def node_to_trace(node_index: dict, trace_type: str | None = None) -> dict:
    return {
        "nodeIndex": node_index,
        "attentionTraceType": trace_type,
        "downstreamTraceConfig": None,
    }


# --- reading responses --------------------------------------------------------------------------

NodeKey = tuple[str, tuple[int, ...], int | None]


def node_key(n: dict) -> NodeKey:
    return (n["nodeType"], tuple(n["tensorIndices"]), n["layerIndex"])


def values_by_node(data: dict, group: str) -> dict[NodeKey, float]:
    """{node: value} of one group of a multiple-top-k response data."""
    return {
        node_key(n): v
        for n, v in zip(data["nodeIndices"], data["activationsByGroupId"][group], strict=True)
    }


def run_batched(model, subs: list[dict]) -> list[dict]:
    from worker.engine import run

    return run("batched", {"inferenceSubRequests": subs}, model)["inferenceSubResponses"]


def token_data(sub_response: dict) -> dict:
    return sub_response["inferenceResponse"]["inferenceAndTokenData"]


def tensors_from_nodes(values: dict[NodeKey, float]) -> dict[int | None, torch.Tensor]:
    """Rebuild layer tensors from a complete node listing (every element listed once)."""
    by_layer: dict[int | None, dict[tuple[int, ...], float]] = {}
    for (_, idx, layer), v in values.items():
        by_layer.setdefault(layer, {})[idx] = v
    out = {}
    for layer, entries in by_layer.items():
        shape = tuple(max(axis) + 1 for axis in zip(*entries, strict=True))
        t = torch.full(shape, math.nan, dtype=torch.float64)
        for idx, v in entries.items():
            t[idx] = v
        assert not bool(t.isnan().any()), f"incomplete listing at layer {layer}"
        out[layer] = t
    return dict(sorted(out.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))


def read_dsts(model, spec: dict, dsts: list[str]) -> tuple[dict[str, dict], dict]:
    """Full forward tensors {dst: {layer: tensor}} of `dsts` for one inference spec, plus its
    inferenceAndTokenData. One batched request, one multiple-top-k spec per DST, k = null."""
    processing = {dst: mtk({"activation": [dst]}) for dst in dsts}
    (answer,) = run_batched(model, [sub_request(spec, processing)])
    data = answer["processingResponseDataByName"]
    return {
        dst: tensors_from_nodes(values_by_node(data[dst], "activation")) for dst in dsts
    }, token_data(answer)


def read_columns(
    model, spec: dict, dst: str, layer: int | None, width: int, pass_type: str = "forward"
) -> torch.Tensor:
    """[T, width]: every column of a 2-D DST (e.g. a backward residual) via derived-scalars specs
    in one batched sub-request."""
    processing = {f"c{i}": ds(dst, layer, i, pass_type) for i in range(width)}
    (answer,) = run_batched(model, [sub_request(spec, processing)])
    data = answer["processingResponseDataByName"]
    return torch.tensor([data[f"c{i}"]["activations"] for i in range(width)], dtype=torch.float64).T


# --- engine internals ---------------------------------------------------------------------------


def hooked_forward(
    model,
    tokens: list[int],
    points: list[tuple[str, int | None]] | None = None,
    forward_hooks: dict | None = None,
):
    """Run the engine's forward pass on one sequence at the width a request's pass runs it
    (``compute_width``: the same bits as the engine); returns (logits [T, V], Hooks) cut to T."""
    from worker.engine.families.gpt2 import forward
    from worker.engine.hooks import HOOK_POINTS, SEQUENCE_AXES, Hooks
    from worker.engine.inference import compute_width

    n = model.weights.n_layers
    if points is None:
        points = [
            (name, layer)
            for name, (_, layered) in HOOK_POINTS.items()
            for layer in (range(n) if layered else [None])
        ]
    hooks = Hooks(save_forward=set(points))
    for key, fns in (forward_hooks or {}).items():
        for fn in fns:
            hooks.add_forward(key, fn)
    t = len(tokens)
    width = compute_width(t)
    tok = torch.zeros(1, width, dtype=torch.long)
    tok[0, :t] = torch.tensor(tokens, dtype=torch.long)
    pad = torch.ones(1, width, dtype=torch.bool)
    pad[0, :t] = False
    with torch.no_grad():
        logits = forward(model.weights, tok, pad, hooks, needs_grad=False)
    for (name, layer), value in hooks.saved.items():
        for axis in SEQUENCE_AXES[name]:
            value = value.narrow(axis + 1, 0, min(t, value.shape[axis + 1]))
        hooks.saved[(name, layer)] = value
    return logits[0, :t], hooks


def saved(hooks, name: str, layer: int | None) -> torch.Tensor:
    return hooks.saved[(name, layer)][0]


# --- an independent reference forward pass ------------------------------------------------------


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))


@dataclass
class Reference:
    """GPT-2 from a Hugging Face state dict, one sequence, every intermediate kept with its grad."""

    sd: dict[str, torch.Tensor]
    n_layers: int
    n_heads: int
    eps: float

    @classmethod
    def from_hf(cls, hf) -> Reference:
        sd = {k: v.detach().clone().float() for k, v in hf.state_dict().items()}
        cfg = hf.config
        return cls(sd, cfg.n_layer, cfg.n_head, cfg.layer_norm_epsilon)

    def w(self, name: str) -> torch.Tensor:
        return self.sd["transformer." + name]

    @property
    def W_U(self) -> torch.Tensor:  # [d, V]
        return self.w("wte.weight").T

    def _ln(self, x, prefix: str, detach: bool) -> tuple[torch.Tensor, torch.Tensor]:
        c = x - x.mean(-1, keepdim=True)
        s = ((c * c).mean(-1, keepdim=True) + self.eps).sqrt()
        if detach:
            s = s.detach()
        return c / s * self.w(prefix + ".weight") + self.w(prefix + ".bias"), s

    def forward(
        self,
        tokens: list[int],
        detach: frozenset = frozenset(),
        stop: dict | None = None,
        grad: bool = True,
    ) -> dict:
        """acts[(name, layer)] with engine hook names; `detach` holds ("ln_1"|"ln_2", l) or
        ("ln_f", None) whose scale is constant; `stop[l]` names "q"/"k"/"v" to stop gradients at."""
        stop = stop or {}
        acts: dict = {}

        def keep(name, layer, x):
            if x.requires_grad:
                x.retain_grad()
            acts[(name, layer)] = x
            return x

        t = len(tokens)
        x = self.w("wte.weight")[tokens] + self.w("wpe.weight")[:t]
        x = keep("resid.post_emb", None, x.clone().requires_grad_(grad))
        d = x.shape[-1]
        h = self.n_heads
        e = d // h
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        for layer in range(self.n_layers):
            p = f"h.{layer}."
            a, s1 = self._ln(x, p + "ln_1", ("ln_1", layer) in detach)
            keep("attn_ln.scale", layer, s1)
            qkv = a @ self.w(p + "attn.c_attn.weight") + self.w(p + "attn.c_attn.bias")
            q, k, v = (y.reshape(t, h, e) for y in qkv.split(d, dim=-1))
            q = q.detach() if "q" in stop.get(layer, ()) else q
            k = k.detach() if "k" in stop.get(layer, ()) else k
            v = v.detach() if "v" in stop.get(layer, ()) else v
            logits = torch.einsum("qhe,khe->qkh", q, k) / math.sqrt(e)
            logits = keep(
                "attn.qk_logits", layer, logits.masked_fill(~causal[..., None], float("-inf"))
            )
            probs = keep("attn.qk_probs", layer, torch.softmax(logits, dim=1))
            z = torch.einsum("qkh,khe->qhe", probs, v)
            delta_a = keep(
                "resid.delta_attn",
                layer,
                z.reshape(t, d) @ self.w(p + "attn.c_proj.weight") + self.w(p + "attn.c_proj.bias"),
            )
            x = keep("resid.post_attn", layer, x + delta_a)
            m, s2 = self._ln(x, p + "ln_2", ("ln_2", layer) in detach)
            keep("mlp_ln.scale", layer, s2)
            pre = keep(
                "mlp.pre_act",
                layer,
                m @ self.w(p + "mlp.c_fc.weight") + self.w(p + "mlp.c_fc.bias"),
            )
            post = keep("mlp.post_act", layer, gelu_new(pre))
            delta_m = keep(
                "resid.delta_mlp",
                layer,
                post @ self.w(p + "mlp.c_proj.weight") + self.w(p + "mlp.c_proj.bias"),
            )
            x = keep("resid.post_mlp", layer, x + delta_m)
        final, sf = self._ln(x, "ln_f", ("ln_f", None) in detach)
        keep("resid.ln_f.scale", None, sf)
        keep("logits", None, final @ self.W_U)
        return acts


def grad_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x) if x.grad is None else x.grad


def encode(model, prompt: str) -> list[int]:
    return model.tokenizer.encode(prompt)

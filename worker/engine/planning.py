"""Planning a batch: each sub-request's tokens, ablations, loss and trace, the hook points its
specs need, and the derived-scalar stores they read (protocol.md §5.2 steps 2-4, §5.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.errors import RequestValidationError
from models.wire import protocol as p
from models.wire.enums import DerivedScalarType
from models.wire.shapes import DST_INFO

from .autoencoders.planning import bind_autoencoder, with_specific_location
from .derived import DstDef, dst_def
from .hooks import HOOK_POINTS
from .inference import Ablation, ElementPlan
from .losses import LossSpec
from .topk import DstTensors
from .tracing import TracedNode
from .view import ElementView

TOKEN_WRITE_POINTS = (
    "mlp.post_act",
    "attn.qk_probs",
    "attn.v",
    "resid.post_emb",
    "online_mlp_autoencoder_latent",
    "online_attention_autoencoder_latent",
)
TOKEN_PAIR_POINTS = ("resid.delta_attn", "attn.qk_probs", "attn.v")
TOKEN_READ_POINTS = ("resid.post_attn",)  # sequential blocks; parallel ones read the layer input
PARALLEL_TOKEN_READ_POINTS = ("resid.post_emb", "resid.post_mlp")


@dataclass(frozen=True)
class Paths:
    """Where a sub-request's fields live in the request as sent, for error messages."""

    inference: str  # e.g. "inferenceSubRequests.0.inferenceRequestSpec"
    specs: dict[str, str]  # spec name -> its path

    @classmethod
    def batched(cls, index: int, names) -> Paths:
        base = f"inferenceSubRequests.{index}"
        return cls(
            f"{base}.inferenceRequestSpec",
            {n: f"{base}.processingRequestSpecByName.{n}" for n in names},
        )


@dataclass
class SubRequestPlan:
    """One sub-request made concrete: tokens, pass plan and its specs."""

    tokens: list[int]
    element: ElementPlan
    specs: dict[str, object]
    fake_grad_index: Ablation | None
    paths: Paths
    dst_trace: TracedNode | None  # the trace the DSTs' directions come from (§3.1, §6.6)
    stores: dict[tuple[str, bool], DstTensors] = field(default_factory=dict)
    top_k: dict[str, object] = field(default_factory=dict)  # spec name -> digests.TopKDigest


def str_value(x) -> str:
    return getattr(x, "value", x)


def groups_of(spec) -> dict[str, list[str]]:
    if isinstance(spec, p.MultipleTopKDerivedScalarsRequestSpec):
        return {
            str_value(g): [str_value(d) for d in dsts]
            for g, dsts in spec.dst_list_by_group_id.items()
        }
    if isinstance(spec, p.DerivedScalarsRequestSpec | p.DerivedAttentionScalarsRequestSpec):
        return {"singleton": [str_value(spec.dst)]}
    return {}


def derives_gradients(spec) -> bool:
    return str_value(getattr(spec, "pass_type", "forward")) == "backward"


def plan_sub_request(sub: p.InferenceSubRequest, paths: Paths, model) -> SubRequestPlan:
    spec_in = sub.inference_request_spec
    base = paths.inference
    tokens = model.tokenizer.encode(spec_in.prompt)
    if not 0 < len(tokens) <= model.meta.n_ctx:
        raise RequestValidationError(
            f"the prompt has {len(tokens)} tokens; this model takes 1 to {model.meta.n_ctx}",
            f"{base}.prompt",
        )
    ablations = [
        Ablation(
            location=str_value(a.index.activation_location_type),
            layer=a.index.layer_index,
            indices=tuple(a.index.tensor_indices),
            backward=str_value(a.index.pass_type) == "backward",
            value=float(a.value),
        )
        for a in spec_in.ablation_specs or ()
    ]
    loss = None
    if spec_in.loss_fn_config is not None:
        cfg = spec_in.loss_fn_config
        lpath = f"{base}.lossFnConfig"
        loss = LossSpec(
            name=str_value(cfg.name),
            targets=tuple(
                model.tokenizer.single_token_id(s, f"{lpath}.targetTokens.{i}")
                for i, s in enumerate(cfg.target_tokens or ())
            ),
            distractors=tuple(
                model.tokenizer.single_token_id(s, f"{lpath}.distractorTokens.{i}")
                for i, s in enumerate(cfg.distractor_tokens or ())
            ),
        )
    parallel = model.weights.parallel
    trace = (
        TracedNode.from_config(spec_in.trace_config, parallel)
        if spec_in.trace_config is not None
        else None
    )
    aes = getattr(model, "autoencoders", None)
    if aes is not None:
        ablations = [with_specific_location(a, aes) for a in ablations]
        trace = bind_autoencoder(trace, aes)
    element = ElementPlan(tokens=tokens, ablations=ablations, loss=loss, trace=trace)
    within = spec_in.activation_index_for_within_layer_grad
    dst_trace = TracedNode.from_activation_index(within, parallel) if within is not None else trace
    if aes is not None and within is not None:
        dst_trace = bind_autoencoder(dst_trace, aes)
    fake = ablations[0] if len(ablations) == 1 else None
    return SubRequestPlan(
        tokens, element, dict(sub.processing_request_spec_by_name), fake, paths, dst_trace
    )


def _all_layers(points, n_layers: int) -> set:
    keys = set()
    for name in points:
        keys.update(
            [(name, layer) for layer in range(n_layers)] if HOOK_POINTS[name][1] else [(name, None)]
        )
    return keys


def requirements(plans: list[SubRequestPlan], model) -> tuple[set, set, bool]:
    """The hook points to save (forward values, gradients) and whether a backward pass is needed."""
    n_layers = model.weights.n_layers
    save_forward, save_grad = set(), set()
    needs_backward = False
    for plan in plans:
        for spec in plan.specs.values():
            if isinstance(spec, p.ScoredTokensRequestSpec):
                read = PARALLEL_TOKEN_READ_POINTS if model.weights.parallel else TOKEN_READ_POINTS
                save_forward |= _all_layers(TOKEN_WRITE_POINTS + read, n_layers)
            if isinstance(spec, p.TokenPairAttributionRequestSpec) and model.autoencoders.attention:
                save_forward |= _all_layers(TOKEN_PAIR_POINTS, n_layers)
            derive = derives_gradients(spec)
            for dsts in groups_of(spec).values():
                for dst in dsts:
                    d = dst_def(dst)
                    save_forward |= _all_layers(d.points, n_layers)
                    grads = d.grad_points + (d.backward_grad_points if derive else ())
                    save_grad |= _all_layers(grads, n_layers)
                    if d.direction:
                        trace = plan.dst_trace
                        save_grad.add(
                            trace.residual_key if trace else ("resid.post_mlp", n_layers - 1)
                        )
                    if d.activation_direction and plan.dst_trace is not None:
                        save_forward.add(plan.dst_trace.residual_key)
                    needs_backward = needs_backward or bool(grads) or d.direction
    return save_forward, save_grad, needs_backward


def dst_store(
    plan: SubRequestPlan, view: ElementView, dst: str, derive: bool, path: str | None
) -> DstTensors:
    key = (dst, derive)
    if key not in plan.stores:
        d: DstDef = dst_def(dst, path)
        if derive and d.backward is None:
            raise RequestValidationError(
                f"{dst} has no backward (gradient) values; use passType forward", path
            )
        info = DST_INFO[DerivedScalarType(dst)]
        if d.layers is not None:
            layers = d.layers(view)
        else:
            layers = list(range(view.weights.n_layers)) if d.layered else [None]
        forward = {layer: d.forward(view, layer) for layer in layers}
        backward = {layer: d.backward(view, layer) for layer in layers} if derive else None
        plan.stores[key] = DstTensors(dst, str_value(info.node_type), forward, backward)
    return plan.stores[key]

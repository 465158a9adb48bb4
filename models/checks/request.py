"""Early semantic validation of a parsed request against the model that will serve it.

The API calls ``validate_request`` before it queues a job, so a bad layer index or a multi-token
target is refused at once instead of failing on a GPU worker; the engine calls it too, so both give
the same answer. Parsing (``models.wire.protocol``) has already checked types; this checks what needs the
model's shape and tokenizer: index ranges, prompt lengths, the rules TDB's server enforced by
crashing (protocol.md §7, Appendix C "Early validation"), and the features actq does not offer.

Status codes: TDB's own 400s stay 400 with TDB's messages (top-k prompt lengths, a target that is
not one token); impossible values that TDB answered with a 500 become 422
(RequestValidationError); autoencoder features and neuron-record normalisation are 422
UnsupportedError. Every error carries the camelCase path of the field to fix; for ``batched_tdb``
the path names the TDB field (``subRequests.0.upstreamNodeToTrace.nodeIndex.layerIndex``).

Deliberate choices where TDB's behaviour is an accident: token, neuron and head indices may be
negative, counting from the end (TDB indexes tensors Python-style), but layer indices may not (TDB
looks layers up by key); an index into a sequence axis must lie within the prompt's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from models.checks.inference import (
    Shape,
    check_ablation,
    check_loss_strings,
    check_loss_structure,
    check_tdb_spec,
    check_trace_levels,
    check_within_layer_grad_index,
    trace_levels,
)
from models.checks.specs import check_gradients, check_spec
from models.errors import NotFoundError, RequestError, RequestValidationError
from models.wire.enums import AttentionTraceType
from models.wire.protocol import (
    BatchedRequest,
    BatchedTdbRequest,
    InferenceRequestSpec,
    MultipleTopKDerivedScalarsRequestSpec,
    WireModel,
    parse_request,
)
from models.wire.tdb import convert_tdb_request

PROMPT_LENGTH_LIMIT = 500

# The spec field of each single-spec route (protocol.md §5.1).
_SINGLE_SPEC_FIELDS = {
    "derived_scalars": "derived_scalars_request_spec",
    "derived_attention_scalars": "derived_attention_scalars_request_spec",
    "multiple_top_k_derived_scalars": "multiple_top_k_derived_scalars_request_spec",
}


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def single_token_id(self, s: str, path: str | None = None) -> int: ...


@dataclass(frozen=True)
class SubRequest:
    """One sub-request with the wire paths of its parts."""

    inference: InferenceRequestSpec
    path: str  # of the inference spec, e.g. "inferenceSubRequests.0.inferenceRequestSpec"
    specs: tuple[tuple[str, WireModel, str], ...]  # (spec name, spec, path of the spec)

    @property
    def has_top_k(self) -> bool:
        return any(isinstance(s, MultipleTopKDerivedScalarsRequestSpec) for _, s, _ in self.specs)


def validate_request(
    endpoint: str,
    request: WireModel | dict,
    meta: Any,
    tokenizer: Tokenizer,
    autoencoders: Any = None,
) -> None:
    """Raise the ActqError a user should see for ``request`` on this model, or return None.

    ``request`` is the parsed model (``models.wire.protocol.parse_request``) or a wire dict;
    ``autoencoders`` the served AEs (``models.autoencoders.ServedAutoencoders``), None for none.
    """
    if endpoint == "model_info":
        return
    if isinstance(request, dict):
        request = parse_request(endpoint, request)
    if endpoint == "batched_tdb":
        _validate_tdb(request, meta, tokenizer, autoencoders)
    elif endpoint in _SINGLE_SPEC_FIELDS or endpoint == "batched":
        _validate_batch(_sub_requests(endpoint, request), meta, tokenizer, autoencoders)
    else:
        raise NotFoundError(f"unknown endpoint {endpoint!r}")


def _sub_requests(endpoint: str, request: WireModel) -> list[SubRequest]:
    if isinstance(request, BatchedRequest):
        return [
            SubRequest(
                inference=sub.inference_request_spec,
                path=f"inferenceSubRequests.{i}.inferenceRequestSpec",
                specs=tuple(
                    (name, spec, f"inferenceSubRequests.{i}.processingRequestSpecByName.{name}")
                    for name, spec in sub.processing_request_spec_by_name.items()
                ),
            )
            for i, sub in enumerate(request.inference_sub_requests)
        ]
    field = _SINGLE_SPEC_FIELDS[endpoint]
    spec_field = type(request).model_fields[field]
    return [
        SubRequest(
            inference=request.inference_request_spec,
            path="inferenceRequestSpec",
            specs=((field, getattr(request, field), spec_field.alias or field),),
        )
    ]


def _validate_batch(
    subs: list[SubRequest], meta: Any, tokenizer: Tokenizer, autoencoders: Any = None
) -> None:
    if not subs:
        raise RequestValidationError("the batch has no sub-requests", path="inferenceSubRequests")
    token_ids = [tokenizer.encode(sub.inference.prompt) for sub in subs]
    check_top_k_lengths(
        [
            (f"{sub.path}.prompt", ids)
            for sub, ids in zip(subs, token_ids, strict=True)
            if sub.has_top_k
        ],
        tokenizer,
        meta,
    )
    for sub, ids in zip(subs, token_ids, strict=True):
        shape = Shape(meta, len(ids), autoencoders)
        check_prompt_length(len(ids), f"{sub.path}.prompt", meta)
        _check_inference_spec(sub.inference, sub.path, shape)
        earlier: dict[str, WireModel] = {}
        for name, spec, path in sub.specs:
            check_spec(spec, path, earlier, sub.inference, shape)
            earlier[name] = spec
        check_gradients(sub.inference, sub.path, sub.specs)
    for sub in subs:
        if sub.inference.loss_fn_config is not None:
            check_loss_strings(sub.inference.loss_fn_config, f"{sub.path}.lossFnConfig", tokenizer)


def _check_inference_spec(spec: InferenceRequestSpec, path: str, shape: Shape) -> None:
    for i, ablation in enumerate(spec.ablation_specs or ()):
        check_ablation(ablation, f"{path}.ablationSpecs.{i}", shape)
    if spec.loss_fn_config is not None:
        check_loss_structure(spec.loss_fn_config, f"{path}.lossFnConfig")
    if spec.trace_config is not None:
        levels = trace_levels(spec.trace_config, f"{path}.traceConfig")
        check_trace_levels(levels, shape)
        if (
            len(levels) == 1
            and levels[0][1] is AttentionTraceType.V
            and spec.loss_fn_config is None
        ):
            raise RequestValidationError(
                "a trace through V without a downstream node takes its direction from the loss: "
                "give lossFnConfig",
                path=f"{path}.lossFnConfig",
            )
    if spec.activation_index_for_within_layer_grad is not None:
        check_within_layer_grad_index(
            spec.activation_index_for_within_layer_grad,
            f"{path}.activationIndexForWithinLayerGrad",
            shape,
        )


def _validate_tdb(
    request: BatchedTdbRequest, meta: Any, tokenizer: Tokenizer, autoencoders: Any = None
) -> None:
    specs = request.sub_requests
    if not specs:
        raise RequestValidationError("the batch has no sub-requests", path="subRequests")
    token_ids = [tokenizer.encode(spec.prompt) for spec in specs]
    check_top_k_lengths(
        [(f"subRequests.{i}.prompt", ids) for i, ids in enumerate(token_ids)], tokenizer, meta
    )
    converted = []
    for i, (spec, ids) in enumerate(zip(specs, token_ids, strict=True)):
        path = f"subRequests.{i}"
        check_prompt_length(len(ids), f"{path}.prompt", meta)
        check_tdb_spec(spec, path, Shape(meta, len(ids), autoencoders))
        sub = convert_tdb_request(spec, path)
        loss = sub.inference_request_spec.loss_fn_config
        if loss is not None:
            check_loss_structure(loss, path)  # the loss's token lists are the request's own
        check_gradients(sub.inference_request_spec, path, ())
        converted.append(loss)
    for i, loss in enumerate(converted):
        if loss is not None:
            check_loss_strings(loss, f"subRequests.{i}", tokenizer)


def check_prompt_length(n_tokens: int, path: str, meta: Any) -> None:
    if n_tokens == 0:
        raise RequestValidationError("the prompt is empty", path=path)
    if n_tokens > meta.n_ctx:
        raise RequestValidationError(
            f"the prompt has {n_tokens} tokens; {meta.name}'s context window is {meta.n_ctx} tokens",
            path=path,
        )


def check_top_k_lengths(
    prompts: list[tuple[str, list[int]]], tokenizer: Tokenizer, meta: Any = None
) -> None:
    """TDB's two 400s for batches with multiple top-k specs (protocol.md §5.2 step 3).

    A model whose context window is under TDB's 500 tokens is told its own limit first: TDB's
    "less than 500 tokens" would send a 600-token prompt on a 128-token model back too long."""
    if meta is not None and meta.n_ctx < PROMPT_LENGTH_LIMIT:
        for path, ids in prompts:
            check_prompt_length(len(ids), path, meta)
    lengths = [len(ids) for _, ids in prompts]
    for path, ids in prompts:
        if len(ids) > PROMPT_LENGTH_LIMIT:
            raise RequestError(
                f"Prompts must be less than {PROMPT_LENGTH_LIMIT} tokens long for batched top-k "
                f"requests. Got these prompt lengths: {lengths}",
                path=path,
            )
    for path, ids in prompts:
        if len(ids) != lengths[0]:
            listed = ", ".join(
                f"{_token_strings(tokenizer, i)!r} ({len(i)} tokens)\n" for _, i in prompts
            )
            raise RequestError(
                "All prompts must have the same length for batched top-k requests. "
                f"Got these prompts:\n{listed}",
                path=path,
            )


def _token_strings(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    decode = getattr(tokenizer, "decode_tokens", None)
    return decode(ids) if decode is not None else [str(i) for i in ids]

"""Input limits: how big a request may be, so that no one request can swamp a worker.

Every limit is a setting (``ACTQ_MAX_*``, ``models.settings``) and every refusal names the field:
the body's size is answered 413 (Flask's ``MAX_CONTENT_LENGTH``, ``api.errors``); a count or size
inside the body 422 with the camelCase path of the field (``subRequests``,
``inferenceSubRequests.0.processingRequestSpecByName``, ``subRequests.1.prompt``,
``multipleTopKDerivedScalarsRequestSpec.topAndBottomK``); tags and labels 422 with ``tag`` or
``label``. The request is walked once, generically, so each limit applies wherever its field
appears (a single route or any sub-request of a batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import current_app

from models.checks.json_shape import ShapeLimits
from models.errors import RequestValidationError
from models.settings import Settings
from models.wire.protocol import WireModel

# Fields that ask for "the top N of something": tokens, nodes, attended-to tokens.
TOP_K_FIELDS = frozenset(
    {
        "top_and_bottom_k",
        "top_and_bottom_k_for_node_table",
        "num_top_tokens",
        "num_tokens",
        "num_tokens_attended_to",
    }
)
BATCH_FIELDS = frozenset({"inference_sub_requests", "sub_requests"})
SPEC_MAP_FIELDS = frozenset({"processing_request_spec_by_name"})


def limits() -> Settings:
    return current_app.config["ACTQ_SETTINGS"]


def shape_limits(settings: Settings) -> ShapeLimits:
    """The limits on the raw JSON's shape (``models.checks.json_shape``)."""
    return ShapeLimits(
        max_depth=settings.max_json_depth,
        max_items_per_container=settings.max_json_items_per_container,
        max_items=settings.max_json_items,
        max_sub_requests=settings.max_sub_requests,
    )


def check_metadata(
    label: str | None, tags: list[str], settings: Settings, count: bool = True
) -> None:
    """A job's label and tags (query ``label=`` / ``tag=`` or ``X-Actq-Label`` / ``-Tags``)."""
    if label is not None and "\x00" in label:
        raise RequestValidationError("the label contains a NUL character", "label")
    if any("\x00" in tag for tag in tags):
        raise RequestValidationError("a tag contains a NUL character", "tag")
    if label is not None and len(label) > settings.max_label_chars:
        raise RequestValidationError(
            f"the label has {len(label)} characters; the limit is {settings.max_label_chars}",
            "label",
        )
    if count and len(tags) > settings.max_tags:
        raise RequestValidationError(f"{len(tags)} tags; the limit is {settings.max_tags}", "tag")
    for tag in tags:
        if not tag or len(tag) > settings.max_tag_chars:
            raise RequestValidationError(
                f"a tag must have 1 to {settings.max_tag_chars} characters", "tag"
            )


def _fields(value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(field name, camelCase path, value) of every wire-model field inside ``value``."""
    if isinstance(value, WireModel):
        for name, info in type(value).model_fields.items():
            child = getattr(value, name)
            child_path = f"{path}.{info.alias or name}" if path else info.alias or name
            yield name, child_path, child
            yield from _fields(child, child_path)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _fields(item, f"{path}.{i}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _fields(item, f"{path}.{getattr(key, 'value', key)}")


def check_no_nul(value: Any, path: str = "") -> None:
    """A 422 naming the first string inside ``value`` (wire JSON) with a NUL character, which
    PostgreSQL's JSON cannot store."""
    if isinstance(value, str):
        if "\x00" in value:
            raise RequestValidationError("a NUL character is not allowed here", path or None)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_no_nul(key, path)
            check_no_nul(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_no_nul(item, f"{path}.{i}" if path else str(i))


def check_request(parsed: WireModel, tokenizer: Any, settings: Settings) -> None:
    """Raise a 422 naming the first field of ``parsed`` over a limit."""
    prompts: list[tuple[str, str]] = []
    for name, path, value in _fields(parsed, ""):
        if name in BATCH_FIELDS and len(value) > settings.max_sub_requests:
            raise RequestValidationError(
                f"{len(value)} sub-requests; the limit is {settings.max_sub_requests} "
                "(ACTQ_MAX_SUB_REQUESTS)",
                path,
            )
        if name in SPEC_MAP_FIELDS and len(value) > settings.max_specs_per_sub_request:
            raise RequestValidationError(
                f"{len(value)} processing specs; the limit is "
                f"{settings.max_specs_per_sub_request} (ACTQ_MAX_SPECS_PER_SUB_REQUEST)",
                path,
            )
        if name in TOP_K_FIELDS and isinstance(value, int) and value > settings.max_top_k:
            raise RequestValidationError(
                f"{value} is above the limit of {settings.max_top_k} (ACTQ_MAX_TOP_K)", path
            )
        if name == "prompt" and isinstance(value, str):
            prompts.append((path, value))
    if settings.max_prompt_tokens is not None:
        for path, prompt in prompts:
            check_prompt_tokens(prompt, path, tokenizer, settings.max_prompt_tokens)


def check_prompt_tokens(prompt: str, path: str, tokenizer: Any, maximum: int) -> None:
    # Each token of a byte-level BPE covers at least one byte: tokenize only when it may matter.
    if len(prompt.encode("utf-8")) <= maximum:
        return
    n_tokens = len(tokenizer.encode(prompt))
    if n_tokens > maximum:
        raise RequestValidationError(
            f"the prompt has {n_tokens} tokens; the limit is {maximum} (ACTQ_MAX_PROMPT_TOKENS)",
            path,
        )

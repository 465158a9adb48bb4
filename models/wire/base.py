"""The base of every wire model: TDB's camelCase rule, the shared config, strict request scalars,
and the helpers that let a union pick its member by a tag field."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainValidator,
    Strict,
)


def tdb_camel(name: str) -> str:
    """TDB's key rule: the first piece as is, each later one capitalised (``tensor_0d`` -> ``tensor0d``).

    Not pydantic's ``to_camel``, which would give ``tensor0D``.
    """
    first, *rest = name.split("_")
    return first + "".join(piece[:1].upper() + piece[1:].lower() for piece in rest)


class WireModel(BaseModel):
    """Base of every wire type."""

    model_config = ConfigDict(
        alias_generator=tdb_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
        extra="ignore",
        loc_by_alias=False,  # error locations use field names; models.wire.paths turns them into keys
    )


# Strict request scalars (see the module docstring).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]


def _activation_tensor_index(value: Any) -> int | str:
    if type(value) is int or value == "All":
        return value
    raise ValueError('must be an integer or the string "All"')


# One entry of MirroredActivationIndex.tensorIndices: an int, or exactly "All" (the whole axis).
ActivationTensorIndex = Annotated[
    int | Literal["All"],
    PlainValidator(_activation_tensor_index, json_schema_input_type=int | Literal["All"]),
]


# ---------------------------------------------------------------------------------------------
# Tags of the unions


_MISSING = object()


def _wire_get(data: dict, field: str) -> Any:
    """The value of ``field`` in raw input, under its camelCase key (which wins) or its own name."""
    alias = tdb_camel(field)
    if alias in data:
        return data[alias]
    return data.get(field, _MISSING)


def _tag_by(field: str, classes: tuple[type[WireModel], ...]) -> Callable[[Any], str | None]:
    """A discriminator: the name of the class whose default for ``field`` is the input's value."""
    by_value = {str(cls.model_fields[field].default.value): cls.__name__ for cls in classes}
    names = {cls.__name__ for cls in classes}

    def tag(value: Any) -> str | None:
        if isinstance(value, BaseModel):
            return type(value).__name__ if type(value).__name__ in names else None
        if isinstance(value, dict):
            given = _wire_get(value, field)
            return by_value.get(given) if isinstance(given, str) else None
        return None

    return tag

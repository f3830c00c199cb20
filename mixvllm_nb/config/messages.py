"""Validation errors as one line: ``source: path: rule (got value)``, with bounds and allowed keys."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from .options import bounds
from .schema import ServeConfig


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """Return pydantic's errors as one line: ``source: path: rule (got value)``."""
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(root)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = f"unknown key; allowed: {_allowed_keys(err['loc'])}"
        elif err["type"] == "literal_error":
            message = message.replace("Input should be", "allowed:")
        elif err["type"] in _BOUND_ERRORS:
            message = f"allowed: {_bounds(err['loc']) or _ctx_bound(err) or message}"
        elif err["type"] == "string_pattern_mismatch":
            message = f"must match the pattern {err['ctx']['pattern']}"
        else:
            message = message.removeprefix("Value error, ")
        shown = err.get("input")
        got = "" if err["type"] in {"extra_forbidden", "missing"} else f" (got {shown!r})"
        parts.append(f"{path}: {message}{got}")
    return f"{source}: " + "; ".join(parts)


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _bounds(loc: tuple) -> str:
    """Return a field's numeric range as text, e.g. ``> 0.0 and <= 1.0`` (the declared bounds)."""
    model: Any = ServeConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return ""
        model = field.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or str(loc[-1]) not in model.model_fields:
        return ""
    span = bounds(str(loc[-1]), model)
    rules = []
    if span.low is not None:
        rules.append(f"{'>' if span.low_open else '>='} {span.low}")
    if span.high is not None:
        rules.append(f"{'<' if span.high_open else '<='} {span.high}")
    return " and ".join(rules)


def _ctx_bound(err: Any) -> str:
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    ctx = err.get("ctx", {})
    return " and ".join(f"{sym} {ctx[key]}" for key, sym in symbols.items() if key in ctx)


def _allowed_keys(loc: tuple) -> str:
    model: type[BaseModel] = ServeConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return "see the documentation"
        model = annotation
    return ", ".join(model.model_fields)


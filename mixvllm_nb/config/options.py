"""Command-line options, slider ranges and chat settings, derived from the config's declarations.

A field declared with ``option(..., flag="--x")`` in :mod:`.schema` becomes the same ``--x`` for
``%vllm_serve`` and ``mixvllm-serve`` (same type, same help), a ``%vllm_plan`` flag when it is an
inference setting, and its bounds set the panel's sliders and the terminal chat's settings.
Only what belongs to a front alone (``--dry-run``, ``--no-wait``) is written in that front.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .schema import GenerationDefaults, ServeConfig


@dataclass(frozen=True)
class Option:
    """One declared option: its dotted config path, flags, value type, choices and help."""

    path: str
    flags: tuple[str, ...]
    kind: type  # bool, int, float or str
    help: str
    choices: tuple[Any, ...] = ()

    @property
    def dest(self) -> str:
        """The attribute argparse stores the value under (from the first flag)."""
        return self.flags[0].lstrip("-").replace("-", "_")

    def argparse_kwargs(self) -> dict[str, Any]:
        """Return ``add_argument`` keywords: a flag for a bool, else a typed value; None means 'not given'.

        Choices are shown in the help but checked by the config, whose one-line error says what is
        allowed, rather than by argparse (which would exit with a usage block).
        """
        text = self.help + (f"; one of {', '.join(map(str, self.choices))}" if self.choices else "")
        text = text.replace("%", "%%")  # argparse %-formats help ("%vllm_sleep" would be a format error)
        if self.kind is bool:
            return {"dest": self.dest, "action": "store_true", "default": None, "help": text}
        metavar = self.flags[0].lstrip("-").replace("-", "_").upper()
        return {"dest": self.dest, "type": self.kind, "default": None, "help": text, "metavar": metavar}


def value_type(annotation: Any) -> tuple[type, tuple[Any, ...]]:
    """Return the value type and Literal choices of a field's annotation (Optional and Annotated unwrapped)."""
    args = [a for a in get_args(annotation) if a is not type(None)] if _is_union(annotation) else [annotation]
    inner = args[0]
    while get_origin(inner) is typing.Annotated:
        inner = get_args(inner)[0]
    if get_origin(inner) is Literal:
        choices = get_args(inner)
        return type(choices[0]), choices
    return (inner if inner in (bool, int, float) else str), ()


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (typing.Union, types.UnionType)


def _declared(model: type[BaseModel], prefix: str = "") -> list[Option]:
    found: list[Option] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _declared(annotation, f"{prefix}{name}.")
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flags = extra.get("flags")
        if flags:
            kind, choices = value_type(annotation)
            choices = tuple(extra.get("choices", ())) or choices
            found.append(Option(f"{prefix}{name}", tuple(flags), kind, info.description or "", choices))
    return found


# Every option with a flag, in the order of the config's sections.
OPTIONS: tuple[Option, ...] = tuple(_declared(ServeConfig))
# What %vllm_plan asks: the model and the inference settings that change the memory plan.
PLAN_OPTIONS: tuple[Option, ...] = tuple(
    o for o in OPTIONS if o.path.startswith("inference.") or o.path == "model.name")
SAMPLING_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.path.startswith("generation_defaults."))


def overrides_from(values: dict[str, Any], options: tuple[Option, ...] = OPTIONS) -> dict[str, Any]:
    """Return ``{dotted path: value}`` for the options given in parsed arguments (``vars(args)``)."""
    return {o.path: values[o.dest] for o in options if values.get(o.dest) is not None}


def keyword_paths() -> dict[str, str]:
    """Return keyword -> dotted path: each section's field by its own name, and every flag's name.

    ``VLLMServer(max_num_seqs=8, gpus=2, temperature=0)`` sets ``inference.max_num_seqs``,
    ``inference.tensor_parallel_size`` and ``generation_defaults.temperature``.
    """
    paths: dict[str, str] = {}
    for section in ("model", "inference", "server", "generation_defaults"):
        for leaf in ServeConfig.model_fields[section].annotation.model_fields:
            paths.setdefault(leaf, f"{section}.{leaf}")
    for option in OPTIONS:  # "name" is the server's name, "model" the model's
        for flag in option.flags:
            paths[flag.lstrip("-").replace("-", "_")] = option.path
    return paths


@dataclass(frozen=True)
class Bounds:
    """A numeric field's range: ``low``/``high`` and whether each end is excluded."""

    kind: type
    low: float | None
    high: float | None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Return True when ``value`` is allowed."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """Return the range in words, e.g. ``a number at least 0, at most 2``."""
        noun = "a whole number" if self.kind is int else "a number"
        shown = (lambda v: f"{int(v):,}") if self.kind is int else (lambda v: f"{v:g}")
        parts = []
        if self.low is not None:
            parts.append(f"{'above' if self.low_open else 'at least'} {shown(self.low)}")
        if self.high is not None:
            parts.append(f"{'below' if self.high_open else 'at most'} {shown(self.high)}")
        return f"{noun} {', '.join(parts)}".strip()


def bounds(name: str, model: type[BaseModel] = GenerationDefaults) -> Bounds:
    """Return the declared range of a numeric field (``bounds("temperature")``: 0 to 2)."""
    info: FieldInfo = model.model_fields[name]
    kind, _ = value_type(info.annotation)
    found: dict[str, float] = {}
    metadata = list(info.metadata)
    for arg in get_args(info.annotation):  # Optional[Annotated[int, Field(ge=1)]]
        for meta in getattr(arg, "__metadata__", ()):
            metadata += list(getattr(meta, "metadata", [meta]))
    for meta in metadata:
        for attr in ("gt", "ge", "lt", "le"):
            if getattr(meta, attr, None) is not None:
                found[attr] = getattr(meta, attr)
    low = found.get("ge", found.get("gt"))
    high = found.get("le", found.get("lt"))
    return Bounds(kind, low, high, low_open="gt" in found, high_open="lt" in found)


# Arguments of both %vllm_serve and mixvllm-serve that are not config fields.
LAUNCH_ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--config",), {"help": "YAML config file (any of the seeds' schemas); the other flags override it"}),
    (("--env",), {"action": "append", "metavar": "KEY=VALUE",
                  "help": "environment variable for the server (repeatable)"}),
    (("--set",), {"action": "append", "metavar": "PATH=VALUE",
                  "help": "any config field, e.g. --set inference.enforce_eager=false (repeatable)"}),
    (("--detach",), {"action": "store_true", "help": "let the server outlive this kernel or shell"}),
    (("--replace",), {"action": "store_true", "help": "stop a server of the same name that runs another config"}),
)


def serve_arguments() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Return ``(flags, add_argument keywords)`` for every serve argument, launch ones first."""
    return [*LAUNCH_ARGUMENTS, *((o.flags, o.argparse_kwargs()) for o in OPTIONS)]


def launch_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Return the dotted config overrides of parsed serve arguments: flags, ``--env`` and ``--set``."""
    from .loading import parse_env_assignments, parse_set_assignments

    overrides = overrides_from(values)
    for key, value in parse_env_assignments(values.get("env")).items():
        overrides[f"env_vars.{key}"] = value
    overrides.update(parse_set_assignments(values.get("set")))
    return overrides

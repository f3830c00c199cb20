"""Inference backends: vLLM, SGLang, llama.cpp, ``auto``, and any custom subclass registered by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import InferenceServer

_CUSTOM: dict[str, type[InferenceServer]] = {}


def backend_names() -> list[str]:
    """Return the names a config's ``backend`` may take."""
    return ["auto", "vllm", "sglang", "llamacpp", *sorted(_CUSTOM)]


def register_backend(cls: type[InferenceServer]) -> type[InferenceServer]:
    """Register a custom InferenceServer subclass under its ``backend_name`` (usable as decorator)."""
    name = getattr(cls, "backend_name", "")
    if not name or name == "base":  # seed 002's way: a get_backend_name() that returns a constant
        try:
            name = cls.get_backend_name(None)  # type: ignore[arg-type]
        except Exception:
            name = ""
    if not name or name == "base":
        raise ConfigError("register_backend: a custom backend needs a class attribute backend_name, e.g. 'mybackend'")
    _CUSTOM[name] = cls
    return cls


def backend_class(name: str) -> type[InferenceServer]:
    """Return the server class for a backend name (``auto``: the engine chosen for this machine)."""
    if name == "auto":
        from .auto import choose_engine

        name = choose_engine()[0]
    if name == "vllm":
        from .vllm import VLLMServer

        return VLLMServer
    if name == "sglang":
        from .sglang import SGLangServer

        return SGLangServer
    if name == "llamacpp":
        from .llamacpp import LlamaCppServer

        return LlamaCppServer
    if name in _CUSTOM:
        return _CUSTOM[name]
    raise ConfigError(f"backend: unknown backend; allowed: {', '.join(backend_names())} (got {name!r})")

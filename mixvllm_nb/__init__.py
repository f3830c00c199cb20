"""mixvllm_nb: serve, watch and learn large language models with vLLM from a Jupyter notebook.

``%load_ext mixvllm_nb`` registers the magics. Importing this package stays light: torch, vllm,
transformers and openai are imported only when a feature first needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it; resolved on first use (PEP 562).
_LAZY = {
    "ServeConfig": "config",
    "load_server_config": "config",
    "ConfigError": "errors",
    "ServerStartError": "errors",
    "InferenceServer": "backends.base",
    "VLLMServer": "backends.vllm",
    "SGLangServer": "backends.sglang",
    "register_backend": "backends",
    "create_server": "api",
    "start_server_from_config": "api",
    "serve": "api",
    "get_server": "api",
    "list_servers": "api",
    "stop_server": "api",
    "detect_gpus": "gpu",
    "resolve_default_model": "models",
    "DEFAULT_MODEL_ID": "models",
}

__all__ = [*sorted(_LAZY), "__version__", "load_ipython_extension"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mixvllm_nb' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%vllm_*`` magics (``%load_ext mixvllm_nb``)."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop servers owned by this kernel that were not detached."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """The Jupyter server extension (``jpserver_extensions: {mixvllm_nb: true}``): its ExtensionApp."""
    from .extension import _jupyter_server_extension_points as points

    return points()

"""What a Jupyter user may ask of a model server over REST: no code through the back door.

Whoever may start a kernel may run code anyway; the servers API also serves users an Authorizer
allows less. Environment variables that make a program load or run other code (``LD_PRELOAD``,
``PYTHONSTARTUP``, ``BROWSER``...) and vLLM's development mode (it opens ``/collective_rpc``, ``/sleep``
and ``/pause`` without a key) are refused unless ``c.MixVLLM.allowed_env_vars`` names them, and a
log may only be written (and a chat template file read) under Jupyter's root folder or mixvllm_nb's state folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config import ServeConfig
from ..errors import ConfigError

# Loader, interpreter and shell hooks: each makes the engine's process run code it was not asked to.
_HOOKS = re.compile(
    r"^(LD_.*|DYLD_.*|PYTHON.*|PERL5?(OPT|LIB)|RUBYOPT|RUBYLIB|NODE_OPTIONS|BASH_ENV|ENV|BROWSER|PATH|"
    r"GCONV_PATH|MALLOC_.*|VLLM_SERVER_DEV_MODE|VLLM_PLUGINS|VLLM_CONFIGURE_LOGGING|VLLM_LOGGING_CONFIG_PATH)$"
)


def check_remote_config(config: ServeConfig, *, allowed_env: set[str], log_roots: list[Path]) -> None:
    """Raise ConfigError (one line) when a config sent over REST asks for what only a kernel may do."""
    for name in config.env_vars:
        if _HOOKS.match(name) and name not in allowed_env:
            raise ConfigError(
                f"env_vars.{name}: not allowed through the servers API (it makes the engine load or run other "
                "code, or opens routes without a key); the Jupyter server's owner can allow it with "
                "c.MixVLLM.allowed_env_vars"
            )
    if config.inference.enable_sleep_mode and "VLLM_SERVER_DEV_MODE" not in allowed_env:
        raise ConfigError("inference.enable_sleep_mode: not allowed through the servers API (it turns on vLLM's "
                          "development mode, VLLM_SERVER_DEV_MODE); the Jupyter server's owner can allow it with "
                          "c.MixVLLM.allowed_env_vars = ['VLLM_SERVER_DEV_MODE']")
    if config.log_dir is not None:
        _check_under("log_dir", str(config.log_dir), log_roots, "a log stays there")
    template = config.tools.chat_template
    if template and "{" not in template:  # a file's path (vLLM reads it), not an inline Jinja template
        _check_under("tools.chat_template", template, log_roots, "a template file is read only from there")


def _check_under(field: str, path: str, roots: list[Path], rule: str) -> None:
    """Refuse a path outside every root (a relative path is taken under the first root)."""
    where = Path(path).expanduser()
    resolved = where.resolve() if where.is_absolute() else (roots[0] / where).resolve()
    if not any(resolved == root or root in resolved.parents for root in (r.resolve() for r in roots)):
        shown = " or ".join(str(root) for root in roots)
        raise ConfigError(f"{field}: {str(where)!r} is outside {shown}; over the servers API {rule}")

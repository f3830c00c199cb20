"""What a Jupyter user may ask of a model server over REST: no code through the back door.

Whoever may start a kernel may run code anyway; the servers API also serves users an Authorizer
allows less. Environment variables that make a program load or run other code (``LD_PRELOAD``,
``PYTHONSTARTUP``, ``BROWSER``...) and vLLM's development mode (it opens ``/collective_rpc``, ``/sleep``
and ``/pause`` without a key) are refused unless ``c.MixVLLM.allowed_env_vars`` names them, and a
log may only be written under Jupyter's root folder or mixvllm_nb's state folder.
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
        where = Path(config.log_dir).expanduser()
        resolved = where.resolve() if where.is_absolute() else (log_roots[0] / where).resolve()
        if not any(resolved == root or root in resolved.parents for root in (r.resolve() for r in log_roots)):
            roots = " or ".join(str(root) for root in log_roots)
            raise ConfigError(f"log_dir: {str(where)!r} is outside {roots}; over the servers API a log stays there")

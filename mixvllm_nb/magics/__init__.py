"""IPython magics: serve, track, chat with and stop servers from a notebook without blocking it.

``%load_ext mixvllm_nb`` registers them, one class per topic: :mod:`.serving` (serve, status, logs,
list, stop, attach, profile), :mod:`.chat` (chat, generate, client, terminal) and :mod:`.tools`
(plan, bench, panel). Each magic is a thin front over :mod:`mixvllm_nb.api`: its serve flags are
derived from the config's declarations, and mixvllm_nb's errors become one-line ``UsageError``s.
Heavy modules (openai, torch, vllm) are imported when a magic first needs them, never at load time.
"""

from __future__ import annotations

import re
from typing import Any

from .adapters import AdapterMagics
from .chat import ChatMagics
from .cluster import ClusterMagics
from .routes import RouteMagics
from .serving import ServingMagics
from .sleep import SleepMagics
from .tools import ToolMagics

MAGIC_CLASSES = (ServingMagics, ChatMagics, ToolMagics, AdapterMagics, RouteMagics, SleepMagics, ClusterMagics)
_QUESTION_MAGIC = re.compile(r"^(\s*)%(vllm_chat|vllm_generate)\b(.*\?)\s*$")


def keep_question_marks(lines: list[str]) -> list[str]:
    """Let ``%vllm_chat What is the capital of France?`` be a question, not a help request.

    IPython reads a line ending in ``?`` as "show help for the last word"; for the chat
    magics the question mark belongs to the message, so such a line becomes an explicit call.
    """
    out = []
    for line in lines:
        match = _QUESTION_MAGIC.match(line)
        if match:
            indent, name, rest = match.groups()
            line = f"{indent}get_ipython().run_line_magic({name!r}, {rest.strip()!r})\n"
        out.append(line)
    return out


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics on ``ipython``."""
    for cls in MAGIC_CLASSES:
        ipython.register_magics(cls)
    cleanup = ipython.input_transformer_manager.cleanup_transforms
    if keep_question_marks not in cleanup:
        cleanup.append(keep_question_marks)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the servers this kernel owns (detached ones stay)."""
    from ..process.ownership import stop_owned_servers

    cleanup = ipython.input_transformer_manager.cleanup_transforms
    if keep_question_marks in cleanup:
        cleanup.remove(keep_question_marks)
    stop_owned_servers()


__all__ = ["ChatMagics", "ServingMagics", "ToolMagics", "load_ipython_extension", "unload_ipython_extension"]

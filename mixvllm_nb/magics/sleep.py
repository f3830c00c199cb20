"""The sleep magics: free a vLLM server's GPU memory between uses, and take it back."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument

from .common import find_server, magic_command, parse


@magics_class
class SleepMagics(Magics):
    """``%vllm_sleep``, ``%vllm_wake``."""

    @line_magic
    @magic_command()
    @argument("name", nargs="?", help="server name (default: the newest)")
    @argument("--level", type=int, choices=(1, 2), default=1,
              help="1: weights to CPU memory, KV cache dropped; 2: weights dropped too")
    def vllm_sleep(self, line: str = "") -> Any:
        """Put a vLLM server to sleep: its GPU memory is freed, it stays registered; ``%vllm_wake`` brings it back.

        Needs vLLM on a CUDA GPU, started with ``inference.enable_sleep_mode: true``; elsewhere it says what
        is missing.
        """
        from ..sleep import sleep_server

        args = parse(self.vllm_sleep, line)
        print(sleep_server(find_server(args.name), args.level))

    @line_magic
    @magic_command()
    @argument("name", nargs="?", help="server name (default: the newest)")
    def vllm_wake(self, line: str = "") -> Any:
        """Wake a sleeping vLLM server (its weights back on the GPU)."""
        from ..sleep import wake_server

        args = parse(self.vllm_wake, line)
        print(wake_server(find_server(args.name)))

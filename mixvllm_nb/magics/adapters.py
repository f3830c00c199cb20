"""The LoRA adapter magic: load, unload and list adapters on a running vLLM server."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument

from .common import find_server, magic_command, parse

_USAGE = "%vllm_lora load NAME PATH | unload NAME | list [--server S]"


@magics_class
class AdapterMagics(Magics):
    """``%vllm_lora``."""

    @line_magic
    @magic_command()
    @argument("--server", help="server name (default: the newest)")
    @argument("action", choices=("load", "unload", "list"), help="load NAME PATH, unload NAME, or list")
    @argument("words", nargs="*", help="the adapter's name (and, to load, the folder peft saved it in)")
    def vllm_lora(self, line: str = "") -> Any:
        """Load a LoRA adapter (a peft folder) into a running vLLM server, unload it, or list the loaded ones.

        The server must run with ``--enable-lora``. Chat with an adapter by its name:
        ``%vllm_chat --model NAME ...`` or ``client.chat.completions.create(model=NAME, ...)``.
        """
        from ..adapters import list_adapters, load_adapter, unload_adapter

        args = parse(self.vllm_lora, line)
        wanted = {"load": 2, "unload": 1, "list": 0}[args.action]
        if len(args.words) != wanted:
            raise UsageError(f"%vllm_lora {args.action}: expected {_USAGE}")
        server = find_server(args.server)
        if args.action == "list":
            adapters = list_adapters(server)
            print("\n".join(f"{a['name']}: {a['path']}" for a in adapters) or f"no adapter loaded on {server.name}")
            return adapters
        message = load_adapter(server, *args.words) if args.action == "load" else unload_adapter(server, *args.words)
        print(message)
        return None

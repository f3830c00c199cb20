"""Magics that talk to a server: chat, generate, an OpenAI client, the chat terminal."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument
from IPython.display import HTML, display

from ..errors import MixVLLMError
from .common import find_server, in_notebook, magic_command, parse, print_stream, sampling_arguments, sampling_of

# One conversation per server, kept until --new or until the server is stopped from this kernel.
_conversations: dict[str, Any] = {}


def forget_conversation(name: str) -> None:
    """Forget the conversation kept for a server (it was stopped)."""
    _conversations.pop(name, None)


def proxy_endpoint(name: str) -> tuple[str, str]:
    """Return ``(url, token)`` of Jupyter's proxy for a server; a one-line UsageError when there is no Jupyter."""
    from ..extension.from_kernel import proxy_base_url

    try:
        return proxy_base_url(name)
    except (MixVLLMError, OSError) as exc:
        raise UsageError(f"--via proxy: {exc}") from None


def open_terminal(server: Any) -> dict[str, Any]:
    """Open ``mixvllm-chat`` for a server in a Jupyter terminal and show a link to it."""
    from ..extension.from_kernel import open_terminal as open_jupyter_terminal

    try:
        info = open_jupyter_terminal(server.name)
    except (MixVLLMError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if in_notebook():
        display(HTML(f"Terminal <b>{info['name']}</b> runs mixvllm-chat for {server.name}: "
                     f"<a href='{info['url']}' target='_blank'>open it</a>"))
    else:
        print(f"terminal {info['name']}: {info['url']}")
    return info


@magics_class
class ChatMagics(Magics):
    """``%vllm_chat``, ``%vllm_generate``, ``%vllm_client``, ``%vllm_terminal``."""

    @line_cell_magic
    @magic_command(sampling_arguments)
    @argument("--server", help="server name (default: the newest)")
    @argument("--system", help="system prompt (kept for the conversation)")
    @argument("--new", action="store_true", help="start a new conversation")
    @argument("--image", action="append", help="image file or URL for vision models (repeatable)")
    @argument("message", nargs="*", help="what to say (or the cell body with %%vllm_chat)")
    def vllm_chat(self, line: str = "", cell: str | None = None) -> None:
        """Chat with a server; the answer streams in; the conversation is kept until ``--new``."""
        from ..client import Conversation, StreamStats, chat_turn, openai_client

        args = parse(self.vllm_chat, line)
        text = (cell if cell is not None else " ".join(args.message)).strip()
        server = find_server(args.server)
        if args.new or server.name not in _conversations:
            _conversations[server.name] = Conversation()
        conversation = _conversations[server.name]
        if args.system is not None:
            conversation.system = args.system
        if not text:
            if args.new:
                print(f"new conversation with {server.name}")
                return
            raise UsageError("nothing to say: %vllm_chat your message, or %%vllm_chat with the message in the cell")
        client = openai_client(server.base_url, server.api_key)
        stats = StreamStats()
        try:
            pieces = chat_turn(client, server.served_model_name, conversation, text, images=args.image,
                               stats=stats, **sampling_of(args))
            print_stream(pieces, stats)
        except ValueError as exc:  # an image that cannot be read
            raise UsageError(str(exc)) from None
        except KeyboardInterrupt:
            print("\n[interrupted: the request was cancelled; the server keeps running]")

    @line_cell_magic
    @magic_command(sampling_arguments)
    @argument("--server", help="server name (default: the newest)")
    @argument("prompt", nargs="*", help="the text to continue (or the cell body)")
    def vllm_generate(self, line: str = "", cell: str | None = None) -> None:
        """Stream a plain completion of a prompt (no chat template)."""
        from ..client import StreamStats, openai_client, stream_completion

        args = parse(self.vllm_generate, line)
        prompt = cell if cell is not None else " ".join(args.prompt)
        if not prompt.strip():
            raise UsageError("nothing to complete: %vllm_generate your prompt")
        server = find_server(args.server)
        client = openai_client(server.base_url, server.api_key)
        stats = StreamStats()
        try:
            print_stream(stream_completion(client, server.served_model_name, prompt, stats=stats,
                                           **sampling_of(args)), stats)
        except KeyboardInterrupt:
            print("\n[interrupted: the request was cancelled; the server keeps running]")

    @line_magic
    @magic_command()
    @argument("name", nargs="?", help="server name (default: the newest)")
    @argument("--via", choices=("direct", "proxy"), default="direct",
              help="direct: the server's URL and key; proxy: Jupyter's authenticated proxy and token")
    def vllm_client(self, line: str = "") -> Any:
        """Return an ``openai.OpenAI`` client for the server: direct (its URL and key) or through Jupyter's proxy."""
        from ..client import openai_client

        args = parse(self.vllm_client, line)
        server = find_server(args.name)
        if args.via == "direct":
            return openai_client(server.base_url, server.api_key)
        return openai_client(*proxy_endpoint(server.name))

    @line_magic
    @magic_command()
    @argument("name", nargs="?", help="server name (default: the newest)")
    def vllm_terminal(self, line: str = "") -> Any:
        """Open the terminal chat client for a server in a Jupyter terminal (needs the extension)."""
        args = parse(self.vllm_terminal, line)
        return open_terminal(find_server(args.name))

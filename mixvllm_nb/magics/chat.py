"""Magics that talk to a server: chat, generate (both with structured output), an OpenAI client, the chat terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument
from IPython.display import HTML, display

from ..errors import MixVLLMError
from .common import (
    Spec,
    find_server,
    in_notebook,
    magic_command,
    parse,
    print_stream,
    sampling_arguments,
    sampling_of,
)

# One conversation per server, kept until --new or until the server is stopped from this kernel.
_conversations: dict[str, Any] = {}
# Started MCP toolboxes by config file: (its mtime, the toolbox). Their servers keep running between cells (a
# server's state lasts the conversation) and stop when the file changes, at close_toolboxes(), or at kernel exit.
_toolboxes: dict[str, tuple[float, Any]] = {}


def forget_conversation(name: str) -> None:
    """Forget the conversation kept for a server (it was stopped)."""
    _conversations.pop(name, None)


def structured_arguments() -> list[Spec]:
    """The structured-output flags of ``%vllm_chat`` and ``%vllm_generate`` (one at a time)."""
    return [
        (("--json-schema",), {"metavar": "FILE_OR_NAME", "default": None,
                              "help": "answer as JSON fitting a schema: a .json file, or the name of a pydantic "
                                      "model or dict in the notebook; the parsed value is the magic's result"}),
        (("--choice",), {"metavar": "A,B,C", "default": None, "help": "answer with exactly one of these"}),
        (("--regex",), {"default": None, "help": "answer with text matching this regular expression "
                                                 "(IPython expands {n} in a magic line: write {{n}})"}),
        (("--grammar",), {"metavar": "FILE", "default": None,
                          "help": "answer following the EBNF/GBNF grammar in FILE"}),
    ]


def chat_arguments() -> list[Spec]:
    """The sampling flags, then the structured-output flags."""
    return [*sampling_arguments(), *structured_arguments()]


def output_format_of(args: Any, namespace: dict[str, Any]) -> Any:
    """Return the :class:`~mixvllm_nb.structured.OutputFormat` a chat magic was given (None for free text).

    ``--json-schema`` names a ``.json`` file or a pydantic model class or dict in the notebook's namespace.
    """
    from ..structured import output_format

    schema = args.json_schema
    if schema is not None and not schema.endswith(".json") and not Path(schema).expanduser().is_file():
        if schema not in namespace:
            raise UsageError(f"--json-schema: {schema!r} is neither a .json file nor a name in the notebook "
                             "(give a file, or the name of a pydantic model class or a dict)")
        schema = namespace[schema]
    choice = None if args.choice is None else [c.strip() for c in args.choice.split(",") if c.strip()]
    grammar = None if args.grammar is None else Path(args.grammar)
    return output_format(json_schema=schema, choice=choice, regex=args.regex, grammar=grammar)


def chat_magic_arguments() -> list[Spec]:
    """The chat flags, then ``--enable-mcp``, ``--mcp-config`` and ``--tool-choice`` (as ``mixvllm-chat``'s)."""
    from ..mcp_tools.chat import mcp_arguments

    return [*chat_arguments(), *mcp_arguments()]


def mcp_toolbox(args: Any) -> Any:
    """Return the started toolbox ``%vllm_chat --enable-mcp --mcp-config FILE`` asks for (None without MCP).

    ``--enable-mcp`` alone reuses the toolbox of the last file given in this kernel.
    """
    if not (args.enable_mcp or args.mcp_config):
        return None
    from ..mcp_tools import load_mcp_config
    from ..mcp_tools.toolbox import Toolbox

    if args.mcp_config is None:
        if not _toolboxes:
            raise UsageError("--enable-mcp: give --mcp-config FILE, the MCP servers to start "
                             "(e.g. configs/mcp_servers.yaml)")
        return list(_toolboxes.values())[-1][1]
    path = Path(args.mcp_config).expanduser().resolve()
    stamp = path.stat().st_mtime if path.is_file() else 0.0
    known = _toolboxes.get(str(path))
    if known is not None and known[0] == stamp:
        return known[1]
    specs = load_mcp_config(args.mcp_config)  # a bad file: one line, and the running toolbox stays
    if known is not None:
        known[1].close()
        _toolboxes.pop(str(path))
    toolbox = Toolbox(specs).start()
    _toolboxes[str(path)] = (stamp, toolbox)
    print("MCP tools: " + ", ".join(f"{t.name} ({t.server})" for t in toolbox.tools.values()))
    return toolbox


def close_toolboxes() -> None:
    """Stop every MCP server the chat magic started in this kernel."""
    while _toolboxes:
        _toolboxes.popitem()[1][1].close()


def structured_value(fmt: Any, text: str, stats: Any) -> Any:
    """Return the parsed answer when a format was asked for (the magic's result), else None."""
    return None if fmt is None else fmt.value_of(text, stats)


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
    @magic_command(chat_magic_arguments)
    @argument("--server", help="server name (default: the newest)")
    @argument("--model", help="model or LoRA adapter to answer, by its served name (default: the server's model)")
    @argument("--system", help="system prompt (kept for the conversation)")
    @argument("--new", action="store_true", help="start a new conversation")
    @argument("--image", action="append", help="image file or URL for vision models (repeatable)")
    @argument("message", nargs="*", help="what to say (or the cell body with %%vllm_chat)")
    def vllm_chat(self, line: str = "", cell: str | None = None) -> Any:
        """Chat with a server; the answer streams in; the conversation is kept until ``--new``.

        With ``--json-schema``, ``--choice``, ``--regex`` or ``--grammar`` the answer is constrained and its
        parsed value is the result (``x = %vllm_chat --json-schema Person ...``). With ``--enable-mcp
        --mcp-config FILE`` the MCP servers' tools are offered: each call is run and shown, then the answer follows.
        """
        from ..client import Conversation, StreamStats, chat_turn, openai_client
        from ..structured import request_keywords

        args = parse(self.vllm_chat, line)
        fmt = output_format_of(args, self.shell.user_ns)
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
        extra = request_keywords(fmt, server.backend_name, "chat")
        toolbox = mcp_toolbox(args)
        client = openai_client(server.base_url, server.api_key)
        stats = StreamStats()
        model = args.model or server.served_model_name
        try:
            if toolbox is None:
                pieces = chat_turn(client, model, conversation, text, images=args.image, stats=stats,
                                   **sampling_of(args), **extra)
            else:
                from ..mcp_tools.chat import tool_chat_turn

                pieces = tool_chat_turn(client, model, conversation, text, toolbox, tool_choice=args.tool_choice,
                                        images=args.image, stats=stats, **sampling_of(args), **extra)
            answer = print_stream(pieces, stats)
        except MixVLLMError:
            raise
        except ValueError as exc:  # an image that cannot be read
            raise UsageError(str(exc)) from None
        except KeyboardInterrupt:
            print("\n[interrupted: the request was cancelled; the server keeps running]")
            return None
        return structured_value(fmt, answer, stats)

    @line_cell_magic
    @magic_command(chat_arguments)
    @argument("--server", help="server name (default: the newest)")
    @argument("prompt", nargs="*", help="the text to continue (or the cell body)")
    def vllm_generate(self, line: str = "", cell: str | None = None) -> Any:
        """Stream a plain completion of a prompt (no chat template); with a structured-output flag, return
        the parsed value."""
        from ..client import StreamStats, openai_client, stream_completion
        from ..structured import request_keywords

        args = parse(self.vllm_generate, line)
        fmt = output_format_of(args, self.shell.user_ns)
        prompt = cell if cell is not None else " ".join(args.prompt)
        if not prompt.strip():
            raise UsageError("nothing to complete: %vllm_generate your prompt")
        server = find_server(args.server)
        extra = request_keywords(fmt, server.backend_name, "completion")
        client = openai_client(server.base_url, server.api_key)
        stats = StreamStats()
        try:
            answer = print_stream(stream_completion(client, server.served_model_name, prompt, stats=stats,
                                                    **sampling_of(args), **extra), stats)
        except KeyboardInterrupt:
            print("\n[interrupted: the request was cancelled; the server keeps running]")
            return None
        return structured_value(fmt, answer, stats)

    @line_magic
    @magic_command()
    @argument("name", nargs="?", help="server name (default: the newest)")
    @argument("--via", choices=("direct", "proxy"), default="direct",
              help="direct: the server's URL and key; proxy: Jupyter's authenticated proxy and token")
    def vllm_client(self, line: str = "") -> Any:
        """Return an ``openai.OpenAI`` client for the server: direct (its URL and key) or through Jupyter's proxy."""
        from ..client import openai_client

        args = parse(self.vllm_client, line)
        from ..process.routes import is_route

        if args.name and is_route(args.name):  # several servers behind one name: only Jupyter's proxy has it
            if args.via != "proxy":
                raise UsageError(f"{args.name} is a route (several servers behind one name): use --via proxy")
            return openai_client(*proxy_endpoint(args.name))
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

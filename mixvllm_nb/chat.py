"""``mixvllm-chat``: a streaming chat with a model server in the terminal, through the Jupyter proxy or directly.

Where it connects, first match wins: ``--base-url``/``--api-key``; the file named by
``MIXVLLM_CHAT_TOKEN_FILE`` (a terminal opened by ``%vllm_terminal`` or the panel sets it: the proxy's URL
and the Jupyter token, which never enter the shell's environment), unless ``--server`` names another server;
``OPENAI_BASE_URL``/``OPENAI_API_KEY``; ``--server`` or ``MIXVLLM_SERVER``, looked up in the registry
(directly to that server); the newest running server in the registry.

Commands: ``/system TEXT`` sets the system prompt (``/system`` alone clears it), ``/reset`` forgets the
conversation, ``/temperature 0.3`` and ``/max_tokens 200`` (alone: the server's default), ``/help``,
``/exit`` (or ``exit``, ``quit``); Ctrl+D quits, Ctrl+C stops an answer.

``--enable-mcp --mcp-config FILE`` offers the tools of the MCP servers listed in FILE to the model (see
:mod:`mixvllm_nb.mcp_tools`): each call it makes is run, shown and answered; ``/tools`` lists them and
``--tool-choice`` (or ``/tool_choice``) says whether it must call one.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from .client import Conversation, chat_turn
from .config.options import SAMPLING_OPTIONS, Bounds, bounds
from .errors import MixVLLMError

PROMPT = "you> "
# The variable a chat terminal sets to the path of its credentials file (see read_token_file).
TOKEN_FILE_VAR = "MIXVLLM_CHAT_TOKEN_FILE"


# Settable with /NAME VALUE and --name VALUE: the generation defaults' fields, with their declared ranges.
SETTINGS: dict[str, Bounds] = {option.path.split(".")[-1]: bounds(option.path.split(".")[-1])
                               for option in SAMPLING_OPTIONS}
HELP = "\n".join([
    "commands:",
    "  /system TEXT            set the system prompt (/system alone clears it)",
    "  /reset                  forget the conversation (the system prompt stays)",
    *(f"  /{name} VALUE".ljust(26) + f"{span.describe()} (/{name} alone: the server's default)"
      for name, span in SETTINGS.items()),
    "  /tools                  the MCP tools offered (with --enable-mcp)",
    "  /tool_choice CHOICE     auto, required, none or a tool's name (with --enable-mcp)",
    "  /help                   this help",
    "  /exit                   quit (or exit, quit, Ctrl+D); Ctrl+C stops an answer",
])


@dataclass
class Endpoint:
    """Where the chat sends its requests: an OpenAI ``/v1`` URL, its key, and what to call it."""

    base_url: str
    api_key: str
    label: str


@dataclass
class ChatSession:
    """One terminal conversation: the history, the system prompt and the sampling settings."""

    client: Any
    model: str
    out: TextIO = sys.stdout
    conversation: Conversation = field(default_factory=Conversation)
    params: dict[str, Any] = field(default_factory=dict)
    toolbox: Any = None  # a started mcp_tools.toolbox.Toolbox, with --enable-mcp
    tool_choice: str = "auto"

    def handle(self, line: str) -> bool:
        """Act on one input line (a command or a question); return False when the user quits."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            return self.command(text)
        if text.lower() in ("exit", "quit"):
            return False
        self.ask(text)
        return True

    def command(self, text: str) -> bool:
        """Run a ``/command``; return False for ``/exit``."""
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.conversation.messages.clear()
            self.say("[conversation cleared]")
        elif name == "/system":
            self.conversation.system = arg or None
            self.say(f"[system prompt: {arg}]" if arg else "[system prompt cleared]")
        elif name[1:] in SETTINGS:
            self.set_param(name[1:], arg)
        elif name == "/tools":
            self.say(self.tools_text())
        elif name == "/tool_choice":
            self.set_tool_choice(arg)
        elif name == "/help":
            self.say(HELP)
        else:
            self.say(f"[unknown command {name}; /help lists them]")
        return True

    def set_param(self, name: str, arg: str) -> None:
        """Set a sampling setting (see SETTINGS), or clear it with no value; refuse values out of range."""
        span = SETTINGS[name]
        if not arg:
            self.params.pop(name, None)
            self.say(f"[{name}: the server's default]")
            return
        try:
            value = span.kind(arg)
        except ValueError:
            value = None
        if value is None or not span.contains(value):
            self.say(f"[{name} {arg!r} is not allowed: give {span.describe()}]")
            return
        self.params[name] = value
        self.say(f"[{name}: {value}]")

    def tools_text(self) -> str:
        """Return the MCP tools offered, one per line (or why there are none)."""
        if self.toolbox is None:
            return "[no tools: start the chat with --enable-mcp --mcp-config FILE]"
        return "\n".join(f"[tool] {t.name} ({t.server}): {t.description.splitlines()[0] if t.description else ''}"
                         for t in self.toolbox.tools.values()) or "[the MCP servers offer no tools]"

    def set_tool_choice(self, arg: str) -> None:
        """Set the tool choice of the next questions, or say what is allowed."""
        from .mcp_tools.chat import tool_choice_value

        if self.toolbox is None:
            self.say(self.tools_text())
            return
        try:
            tool_choice_value(arg or "auto", self.toolbox)
        except MixVLLMError as exc:
            self.say(f"[{exc}]")
            return
        self.tool_choice = arg or "auto"
        self.say(f"[tool choice: {self.tool_choice}]")

    def turn(self, text: str) -> Any:
        """Return the streamed transcript of one question: the answer, and the tool calls with --enable-mcp."""
        if self.toolbox is None:
            return chat_turn(self.client, self.model, self.conversation, text, **self.params)
        from .mcp_tools.chat import tool_chat_turn

        return tool_chat_turn(self.client, self.model, self.conversation, text, self.toolbox,
                              tool_choice=self.tool_choice, **self.params)

    def ask(self, text: str) -> None:
        """Send a question and print the answer as it streams in."""
        try:
            for piece in self.turn(text):
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            self.out.write("\n[stopped]")
        except Exception as exc:  # one failed request must not end the chat
            self.out.write(f"[error: {_one_line(exc)}]")
        self.out.write("\n")
        self.out.flush()

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _one_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"


def read_token_file(path: str) -> dict[str, str]:
    """Return ``{"server", "base_url", "api_key"}`` from a chat terminal's credentials file.

    Raise SystemExit when the file is missing, not JSON, or readable by anyone but its owner (a key
    others can read, or a file another user planted, is not used).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise SystemExit(f"mixvllm-chat: {TOKEN_FILE_VAR}={path}: {exc.strerror}") from None
    with os.fdopen(fd) as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise SystemExit(f"mixvllm-chat: {TOKEN_FILE_VAR}={path} must be yours and mode 0600 "
                             f"(it is {stat.S_IMODE(info.st_mode):04o}); not using it")
        try:
            data = json.load(handle)
        except ValueError:
            data = None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("server", "base_url", "api_key")):
        raise SystemExit(f"mixvllm-chat: {TOKEN_FILE_VAR}={path} is not a chat credentials file; "
                         "open a new chat terminal")
    return data


def resolve_endpoint(args: argparse.Namespace, env: dict[str, str] | None = None) -> Endpoint:
    """Return where to connect (see the module docstring for the order); raise SystemExit with a hint."""
    env = dict(os.environ if env is None else env)
    token_file = None if args.base_url else env.get(TOKEN_FILE_VAR)
    if token_file:
        data = read_token_file(token_file)
        if args.server in (None, data["server"]):
            return Endpoint(data["base_url"].rstrip("/"), args.api_key or data["api_key"], data["base_url"])
    base_url = args.base_url or env.get("OPENAI_BASE_URL")
    if base_url:
        key = args.api_key or env.get("OPENAI_API_KEY") or "EMPTY"
        return Endpoint(base_url.rstrip("/"), key, base_url)
    from .process import registry

    name = args.server or env.get("MIXVLLM_SERVER")
    try:
        if name:
            record = registry.get(name)
        else:
            live = [r for r in registry.list_records() if not r.is_dead()]
            if not live:
                raise SystemExit("mixvllm-chat: no server is running; start one, or set OPENAI_BASE_URL")
            record = live[-1]
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"mixvllm-chat: {exc}") from None
    assert record is not None
    return Endpoint(f"{record.base_url.rstrip('/')}/v1", args.api_key or record.api_key or "EMPTY", record.name)


def first_model(client: Any) -> str:
    """Return the first model the server lists."""
    models = client.models.list()
    if not models.data:
        raise SystemExit("mixvllm-chat: the server lists no model")
    return models.data[0].id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mixvllm-chat", description="Chat with a model server in the terminal.",
                                     epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="OpenAI API URL ending in /v1 (default: $OPENAI_BASE_URL)")
    parser.add_argument("--api-key", help="API key or Jupyter token (default: $OPENAI_API_KEY)")
    parser.add_argument("--server", help="registered server name (default: $MIXVLLM_SERVER, or the newest)")
    parser.add_argument("--model", help="model name (default: the server's first)")
    parser.add_argument("--system", help="system prompt")
    for option in SAMPLING_OPTIONS:  # the same flags as the magics' and mixvllm-serve's sampling
        kwargs = {**option.argparse_kwargs(), "help": f"{option.help} (default: the server's)"}
        parser.add_argument(*option.flags, **kwargs)
    add_mcp_arguments(parser)
    return parser.parse_args(argv)


def add_mcp_arguments(parser: Any) -> None:
    """Add ``--enable-mcp``, ``--mcp-config`` and ``--tool-choice`` (the chat magic takes the same)."""
    from .mcp_tools.chat import mcp_arguments

    for flags, kwargs in mcp_arguments():
        parser.add_argument(*flags, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Run the chat until /exit or Ctrl+D; return the exit status."""
    args = parse_args(argv)
    endpoint = resolve_endpoint(args)
    from openai import OpenAI

    client = OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0)
    try:
        model = args.model or first_model(client)
    except Exception as exc:
        print(f"mixvllm-chat: cannot reach {endpoint.base_url}: {_one_line(exc)}", file=sys.stderr)
        return 1
    session = ChatSession(client, model)
    if args.system:
        session.conversation.system = args.system
    for name in SETTINGS:
        if getattr(args, name) is not None:
            session.set_param(name, str(getattr(args, name)))
    greeting = f"mixvllm-chat: {model} at {endpoint.label}. /help for commands, Ctrl+D to quit."
    if not (args.enable_mcp or args.mcp_config):
        return run(session, greeting)
    try:
        from .mcp_tools.chat import tool_choice_value

        session.toolbox = start_toolbox(args.mcp_config)
        tool_choice_value(args.tool_choice, session.toolbox)  # an unknown tool's name: one line, before any question
        session.tool_choice = args.tool_choice
        return run(session, f"{greeting}\n{session.tools_text()}")
    except MixVLLMError as exc:
        print(f"mixvllm-chat: {exc}", file=sys.stderr)
        return 1
    finally:
        if session.toolbox is not None:
            session.toolbox.close()  # the stdio MCP servers stop with the chat


def start_toolbox(path: str | None) -> Any:
    """Return a started toolbox for the MCP servers in ``path``; ConfigError or MCPServerError in one line."""
    from .mcp_tools import load_mcp_config
    from .mcp_tools.toolbox import Toolbox

    if not path:
        from .errors import ConfigError

        raise ConfigError("--enable-mcp: give --mcp-config FILE, the MCP servers to start (e.g. "
                          "configs/mcp_servers.yaml)")
    return Toolbox(load_mcp_config(path)).start()


def run(session: ChatSession, greeting: str) -> int:
    """Read lines until /exit or Ctrl+D, answering each; return the exit status."""
    try:
        import readline  # noqa: F401  (line editing and input history for input())
    except ImportError:
        pass
    session.say(greeting)
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            session.say("")
            return 0
        except KeyboardInterrupt:
            session.say("")
            continue
        if not session.handle(line):
            return 0


if __name__ == "__main__":
    sys.exit(main())

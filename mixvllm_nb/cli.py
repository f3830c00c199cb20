"""``mixvllm-serve``: start a server from a YAML file and/or flags, list servers, stop them.

    mixvllm-serve [--config x.yaml] [--model M] [flags...] [--dry-run | --detach]
    mixvllm-serve list
    mixvllm-serve stop NAME | --all
    mixvllm-serve key NAME
    mixvllm-serve generate --prompt TEXT [--stream] [flags...]   (a running server of this config, or one for it)
    mixvllm-serve chat [--system-prompt TEXT] [flags...]

Exit codes: 0 on success and after Ctrl+C (the whole process tree is stopped), 1 for a config
error or a start-up failure (one line naming the cause, then the log tail).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from .config import load_server_config
from .config.options import launch_overrides, serve_arguments
from .display import Table
from .errors import MixVLLMError, OwnedElsewhereError, ServerStartError

if TYPE_CHECKING:
    from .backends.base import InferenceServer

PROG = "mixvllm-serve"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 1, like every config error
        self.exit(1, f"{self.prog}: error: {message}\n")


def _serve_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Start an OpenAI-compatible vLLM (or llama.cpp, SGLang) server.")
    for flags, kwargs in serve_arguments():  # the same arguments and help as %vllm_serve
        parser.add_argument(*flags, **kwargs)
    parser.add_argument("--dry-run", action="store_true", help="print the final config and command; start nothing")
    return parser


def _fail(message: str, code: int = 1) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def cmd_serve(argv: list[str]) -> int:
    """Start (or reuse) a server; stay in the foreground until Ctrl+C unless ``--detach`` or ``--dry-run``."""
    from .api import serve, server_for_config

    args = _serve_parser().parse_args(argv)
    try:
        config = load_server_config(args.config, launch_overrides(vars(args)))
        if args.dry_run:
            if note := config.terminal.unused_note():
                print(f"# {note}")
            return _dry_run(server_for_config(config, owner_kind="cli"))
        print(f"{PROG}: starting {config.model.name or 'the embedded model'} ...", flush=True)
        result = serve(config, replace=args.replace, wait=False, detach=args.detach, owner_kind="cli")
    except MixVLLMError as exc:
        return _fail(str(exc))
    server = result.server
    print(f"{PROG}: {result.describe()}", flush=True)
    if result.outcome == "Reused":  # another process owns it: nothing of ours to keep in the foreground
        return 0
    interrupted = False

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.wait_until_ready()
        print(
            f"{PROG}: {server.name} ready at {server.base_url}/v1 (pid {server.pid}); "
            f"log {server.log_path}; API key: `{PROG} key {server.name}`",
            flush=True,
        )
        if server.config.terminal.enabled:  # a shell has no Jupyter terminal to open: say what to run
            print(f"{PROG}: chat with it in another terminal: mixvllm-chat --server {server.name}", flush=True)
        if args.detach:
            return 0
        while server.state.live:
            time.sleep(0.5)
        print(f"{PROG}: {server.name} {server.state}: {server.error or 'see the log'}", file=sys.stderr)
        server.stop()
        return 1
    except ServerStartError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        if exc.log_tail:
            print(f"--- last lines of {exc.log_path} ---\n{exc.log_tail}", file=sys.stderr)
        return 1
    except MixVLLMError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if not args.detach and server.state.live:
            report = server.stop()
            print(f"{PROG}: {server.name}: {report.summary()}", flush=True)
    return 0 if interrupted else 1


def _dry_run(server: InferenceServer) -> int:
    command = server.get_launch_command()
    env = server.get_launch_env()
    shown = server.config.public_dict()
    print("# final config (API key not shown)")
    print(yaml.safe_dump(shown, sort_keys=False).rstrip())
    print("# environment added")
    for key in sorted(env):
        secret = "KEY" in key or "TOKEN" in key or "SECRET" in key
        print(f"{key}={'<hidden>' if secret else env[key]}")
    print("# launch command")
    print(shlex.join(command))
    return 0


def cmd_list(argv: list[str]) -> int:
    """Print every registered server, ended ones flagged (the same view as %vllm_list and the REST API)."""
    from .api import list_servers
    from .status import LIST_COLUMNS, list_rows

    parser = _Parser(prog=f"{PROG} list", description="List registered servers.")
    parser.add_argument("--clean", action="store_true", help="forget servers whose process is gone")
    args = parser.parse_args(argv)
    if args.clean:
        from .process import registry

        for name in registry.clean_dead():
            print(f"removed dead entry {name}")
    rows = list_rows(list_servers())
    if not rows:
        print("no servers registered")
        return 0
    print(str(Table(LIST_COLUMNS, rows)))
    return 0


def cmd_stop(argv: list[str]) -> int:
    """Stop one server by name, or all of them."""
    from .api import list_servers, stop_server

    parser = _Parser(prog=f"{PROG} stop", description="Stop servers and verify nothing is left.")
    parser.add_argument("name", nargs="?", help="server name")
    parser.add_argument("--all", action="store_true", help="stop every registered server")
    parser.add_argument("--force", action="store_true", help="also stop a server that another live process owns")
    args = parser.parse_args(argv)
    if not args.name and not args.all:
        return _fail("stop: give a server NAME or --all")
    names = [row["name"] for row in list_servers()] if args.all else [args.name]
    left = 0
    try:
        for name in names:
            try:
                print(stop_server(name, force=args.force))
            except OwnedElsewhereError as exc:  # the others still stop
                left += 1
                print(f"{PROG} stop: {exc}", file=sys.stderr)
    except MixVLLMError as exc:
        return _fail(str(exc))
    return 1 if left else 0


def cmd_key(argv: list[str]) -> int:
    """Print a server's API key (only when asked: it is never logged)."""
    from .process import registry

    parser = _Parser(prog=f"{PROG} key", description="Print a server's API key.")
    parser.add_argument("name")
    args = parser.parse_args(argv)
    try:
        print(registry.get(args.name).api_key)
    except MixVLLMError as exc:
        return _fail(str(exc))
    return 0


def _one_off_parser(command: str, description: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=f"{PROG} {command}", description=description)
    for flags, kwargs in serve_arguments():
        parser.add_argument(*flags, **kwargs)
    return parser


def _one_off_server(args: argparse.Namespace) -> tuple[InferenceServer, dict[str, Any], bool]:
    """Return a ready server for a one-off command (a running one with the same config, else a new one),
    the sampling to send with each request, and whether this command launched it (and must stop it)."""
    from .api import serve

    overrides = launch_overrides(vars(args))
    # Sampling travels with the requests: a running server with other defaults is still the same server.
    sampling = {path.split(".", 1)[1]: overrides.pop(path) for path in list(overrides)
                if path.startswith("generation_defaults.")}
    result = serve(load_server_config(args.config, overrides), detach=False, owner_kind="cli")
    print(f"{PROG}: {result.describe()}", file=sys.stderr, flush=True)
    return result.server, sampling, result.outcome == "Launched"


def cmd_generate(argv: list[str]) -> int:
    """Complete one prompt with a running server of this config, or one started (and stopped) for it."""
    parser = _one_off_parser("generate", "Complete one prompt (seed 004's inference-generate).")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=False,
                        help="print the answer as it streams in (default: when it is complete)")
    args = parser.parse_args(argv)
    launched, server = False, None
    try:
        server, sampling, launched = _one_off_server(args)
        printer = (lambda piece: print(piece, end="", flush=True)) if args.stream else None
        reply = server.generate(args.prompt, on_piece=printer, **sampling)
        print("" if args.stream else reply.text)
        return 0
    except MixVLLMError as exc:
        return _fail(str(exc))
    finally:
        if launched and server is not None:
            print(f"{PROG}: {server.name}: {server.stop().summary()}", file=sys.stderr)


def cmd_chat(argv: list[str]) -> int:
    """Chat in the terminal with a running server of this config, or one started (and stopped) for it."""
    from openai import OpenAI

    from .chat import ChatSession, run

    parser = _one_off_parser("chat", "Chat in the terminal (seed 004's inference-chat).")
    parser.add_argument("--system-prompt", "--system", dest="system", help="system prompt")
    args = parser.parse_args(argv)
    launched, server = False, None
    try:
        server, sampling, launched = _one_off_server(args)
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)
        session = ChatSession(client, server.served_model_name, params=sampling)
        session.conversation.system = args.system
        return run(session, f"{PROG} chat: {server.served_model_name}. /help for commands, Ctrl+D to quit.")
    except MixVLLMError as exc:
        return _fail(str(exc))
    finally:
        if launched and server is not None:
            print(f"{PROG}: {server.name}: {server.stop().summary()}", file=sys.stderr)


COMMANDS = {"list": cmd_list, "stop": cmd_stop, "key": cmd_key, "generate": cmd_generate, "chat": cmd_chat}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mixvllm-serve``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return cmd_serve(argv)


if __name__ == "__main__":
    sys.exit(main())

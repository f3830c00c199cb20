"""``mixvllm-serve``: start a server from a YAML file and/or flags, list servers, stop them.

    mixvllm-serve [--config x.yaml] [--model M] [flags...] [--dry-run | --detach]
    mixvllm-serve list
    mixvllm-serve stop NAME | --all
    mixvllm-serve key NAME

Exit codes: 0 on success and after Ctrl+C (the whole process tree is stopped), 1 for a config
error or a start-up failure (one line naming the cause, then the log tail).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from typing import Any, NoReturn

import yaml

from .config import CLI_OPTION_PATHS, load_server_config, parse_env_assignments
from .errors import MixVLLMError, ServerStartError

PROG = "mixvllm-serve"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 1, like every config error
        self.exit(1, f"{self.prog}: error: {message}\n")


def _serve_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Start an OpenAI-compatible vLLM (or SGLang) server.")
    add = parser.add_argument
    add("--config", help="YAML config file; the flags below override it")
    add("--model", help="Hugging Face id or local folder (default: the embedded SmolLM2-135M)")
    add("--trust-remote-code", action="store_true", default=None, help="allow the model's code")
    add("--gpus", type=int, help="tensor parallel size (GPUs per replica)")
    add("--gpu-memory", type=float, help="GPU memory utilisation, 0 < x <= 1")
    add("--max-model-len", type=int, help="longest prompt + answer in tokens")
    add("--dtype", help="auto, float32, float16 or bfloat16 (default: float32 on CPU)")
    add("--quantization", help="awq, gptq, squeezellm or fp8")
    add("--kv-cache-dtype", help="auto, fp8, fp8_e4m3, fp8_e5m2")
    add("--cpu-kv-cache-gib", type=int, help="KV cache GiB on CPU (whole number)")
    add("--max-num-seqs", type=int, help="most sequences per batch")
    add("--host", help="bind address (default 127.0.0.1: loopback only)")
    add("--port", type=int, help="port 1024-65535 (default: a free one)")
    add("--name", help="registry name (default: from the model)")
    add("--backend", help="auto (default: vLLM where it fits, else llama.cpp), vllm, llamacpp or sglang")
    add("--temperature", type=float, help="default temperature, 0-2")
    add("--max-tokens", type=int, help="default answer length")
    add("--top-p", type=float, help="default nucleus mass, 0 < p <= 1")
    add("--top-k", type=int, help="default top-k (-1 = all)")
    add("--presence-penalty", type=float, help="default presence penalty, -2..2")
    add("--frequency-penalty", type=float, help="default frequency penalty, -2..2")
    add("--startup-timeout", type=float, help="seconds to wait for readiness")
    add("--log-dir", help="folder for the server log")
    add("--env", action="append", metavar="KEY=VALUE", help="environment variable (repeatable)")
    add("--dry-run", action="store_true", help="print the final config and command; start nothing")
    add("--detach", action="store_true", help="start, print the URL and exit, leaving it running")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = vars(args)
    overrides = {path: values.get(opt) for opt, path in CLI_OPTION_PATHS.items() if opt in values}
    env = parse_env_assignments(args.env)
    for key, value in env.items():
        overrides[f"env_vars.{key}"] = value
    return overrides


def _fail(message: str, code: int = 1) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def cmd_serve(argv: list[str]) -> int:
    """Start a server in the foreground until Ctrl+C (or ``--detach`` / ``--dry-run``)."""
    from .api import server_for_config

    args = _serve_parser().parse_args(argv)
    try:
        config = load_server_config(args.config, _overrides(args))
        server = server_for_config(config, detach=args.detach, owner_kind="cli")
        if args.dry_run:
            return _dry_run(server)
    except (MixVLLMError, ValueError) as exc:
        return _fail(str(exc))
    interrupted = False

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"{PROG}: starting {server.served_model_name} on {server.engine_label} ...", flush=True)
        server.start()
        print(
            f"{PROG}: {server.name} ready at {server.base_url}/v1 (pid {server.pid}); "
            f"log {server.log_path}; API key: `{PROG} key {server.name}`",
            flush=True,
        )
        if server.config.terminal.enabled:  # a shell has no Jupyter terminal to open: say what to run
            print(f"{PROG}: chat with it in another terminal: mixvllm-chat --server {server.name}", flush=True)
        if args.detach:
            return 0
        while server.state in ("ready", "unhealthy", "starting"):
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
        if not args.detach and server.state in ("starting", "ready", "unhealthy"):
            report = server.stop()
            print(f"{PROG}: {server.name}: {report.summary()}", flush=True)
    return 0 if interrupted else 1


def _dry_run(server: Any) -> int:
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
    """Print every registered server, dead ones flagged."""
    from .api import list_servers

    parser = _Parser(prog=f"{PROG} list", description="List registered servers.")
    parser.add_argument("--clean", action="store_true", help="forget servers whose process is gone")
    args = parser.parse_args(argv)
    if args.clean:
        from .process import registry

        for name in registry.clean_dead():
            print(f"removed dead entry {name}")
    rows = list_servers()
    if not rows:
        print("no servers registered")
        return 0
    print(f"{'NAME':24} {'STATE':10} {'PID':>7} {'URL':28} MODEL")
    for row in rows:
        state = "dead" if row["dead"] else row["state"]
        pid = row["pid"] or "-"
        print(f"{row['name']:24} {state:10} {pid!s:>7} {row['base_url']:28} {row['served_model_name']}")
    return 0


def cmd_stop(argv: list[str]) -> int:
    """Stop one server by name, or all of them."""
    from .api import list_servers, stop_server

    parser = _Parser(prog=f"{PROG} stop", description="Stop servers and verify nothing is left.")
    parser.add_argument("name", nargs="?", help="server name")
    parser.add_argument("--all", action="store_true", help="stop every registered server")
    args = parser.parse_args(argv)
    if not args.name and not args.all:
        return _fail("stop: give a server NAME or --all")
    names = [row["name"] for row in list_servers()] if args.all else [args.name]
    try:
        for name in names:
            print(stop_server(name))
    except (MixVLLMError, ValueError) as exc:
        return _fail(str(exc))
    return 0


def cmd_key(argv: list[str]) -> int:
    """Print a server's API key (only when asked: it is never logged)."""
    from .process import registry

    parser = _Parser(prog=f"{PROG} key", description="Print a server's API key.")
    parser.add_argument("name")
    args = parser.parse_args(argv)
    try:
        print(registry.get(args.name).api_key)
    except (MixVLLMError, ValueError) as exc:
        return _fail(str(exc))
    return 0


COMMANDS = {"list": cmd_list, "stop": cmd_stop, "key": cmd_key}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mixvllm-serve``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return cmd_serve(argv)


if __name__ == "__main__":
    sys.exit(main())

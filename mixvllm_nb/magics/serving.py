"""Magics that start, watch and stop servers: serve, status, logs, list, stop, attach, profile."""

from __future__ import annotations

import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument

from ..errors import ServerStartError, ServerTimeoutError
from .common import find_server, magic_command, parse
from .progress import StartupProgress


def _serve_specs() -> list[Any]:
    from ..config.options import serve_arguments  # pydantic: imported when the magic is first used

    return serve_arguments()


@magics_class
class ServingMagics(Magics):
    """``%vllm_serve``, ``%vllm_status``, ``%vllm_logs``, ``%vllm_list``, ``%vllm_stop``, ``%vllm_attach``,
    ``%vllm_profile``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self._metrics_seen: dict[str, tuple[float, float]] = {}

    @line_magic
    @magic_command(_serve_specs)
    @argument("--no-wait", action="store_true", help="return at once; progress keeps updating in this cell")
    def vllm_serve(self, line: str = "") -> Any:
        """Start a server (or reuse an identical running one) and show its start-up progress."""
        from ..api import serve
        from ..config import load_server_config
        from ..config.options import launch_overrides

        args = parse(self.vllm_serve, line)
        config = load_server_config(args.config, launch_overrides(vars(args)))
        result = serve(config, replace=args.replace, wait=False, detach=args.detach, owner_kind="kernel")
        server = result.server
        print(result.describe())
        if result.outcome == "Reused":
            return server
        progress = StartupProgress(server)
        if args.no_wait:
            progress.follow_in_background()
            return server
        try:
            progress.wait()
        except KeyboardInterrupt:
            print(f"Interrupted: {server.name} keeps starting in the background (%vllm_stop {server.name} to stop it).")
            progress.follow_in_background()
        except ServerTimeoutError as exc:
            print(f"TimedOut: {exc}\n{exc.log_tail}", file=sys.stderr)
            raise UsageError(f"TimedOut: {exc}") from None
        except ServerStartError as exc:
            print(f"--- last lines of {exc.log_path} ---\n{exc.log_tail}", file=sys.stderr)
            raise UsageError(f"Failed: {exc}") from None
        if server.state == "ready" and server.config.terminal.enabled:
            from .chat import open_terminal

            try:  # the config asks for a chat terminal beside the server (seed 001's terminal.enabled)
                open_terminal(server)
            except UsageError as exc:
                print(f"terminal.enabled: no terminal opened: {exc}", file=sys.stderr)
        return server

    @line_magic
    @magic_command()
    @argument("name", nargs="?", help="server name (default: all)")
    def vllm_status(self, line: str = "") -> Any:
        """Show name, model, state, URL, pid, uptime, KV cache, requests and tokens/s."""
        from ..status import status_table

        args = parse(self.vllm_status, line)
        return status_table(args.name, self._metrics_seen)

    @line_magic
    @magic_command()
    @argument("name", nargs="?", help="server name (default: the newest)")
    @argument("-n", "--lines", type=int, default=50, help="how many lines")
    @argument("--follow", action="store_true", help="keep printing new lines until interrupted or stopped")
    def vllm_logs(self, line: str = "") -> None:
        """Print the tail of a server's log; ``--follow`` streams new lines."""
        from ..process import logs
        from ..process.view import current_state

        args = parse(self.vllm_logs, line)
        server = find_server(args.name)
        if server.attached or not server.log_path:
            raise UsageError(f"{server.name} is attached: its log lives on the remote machine")
        server.refresh_log()  # a server on a Ray cluster: its job's log, copied here
        print(logs.tail(server.log_path, args.lines))
        if not args.follow:
            return

        def still_running() -> bool:
            server.refresh_log()
            return current_state(server.name, server).live

        try:
            for chunk in logs.follow(server.log_path, still_running):
                print(chunk, end="", flush=True)
            print(f"[{server.name} is {current_state(server.name, server)}]")
        except KeyboardInterrupt:
            print(f"[stopped following {server.name}; the server keeps running]")

    @line_magic
    @magic_command()
    @argument("name", nargs="?", help="server name")
    @argument("--all", action="store_true", help="stop every registered server")
    @argument("--force", action="store_true", help="also stop a server that another live kernel or process owns")
    def vllm_stop(self, line: str = "") -> None:
        """Stop a server (or detach an attached one) and confirm nothing is left.

        A server another live kernel owns (reused here) is left running, and says whose it is, unless ``--force``.
        """
        from ..api import list_servers, stop_server
        from ..errors import OwnedElsewhereError
        from .chat import forget_conversation

        args = parse(self.vllm_stop, line)
        if args.all:
            names = [view["name"] for view in list_servers()]
            if not names:
                print("no servers registered")
        else:
            names = [args.name or find_server(None).name]
        for name in names:
            try:
                print(stop_server(name, force=args.force))
            except OwnedElsewhereError as exc:
                print(exc)  # not a failure: this notebook is done with it, its owner is not
            forget_conversation(name)

    @line_magic
    @magic_command()
    @argument("action", choices=("start", "stop"), help="start or stop the PyTorch profiler")
    @argument("name", nargs="?", help="server name (default: the newest)")
    def vllm_profile(self, line: str = "") -> None:
        """Start or stop a server's PyTorch profiler (its config: ``profile: {enabled: true, tool: pytorch}``)."""
        from pathlib import Path

        args = parse(self.vllm_profile, line)
        server = find_server(args.name)
        folder = server.profile(args.action)
        if args.action == "start":
            print(f"profiling {server.name}: send it requests, then %vllm_profile stop {server.name}")
            return
        traces = sorted(Path(folder).rglob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
        print(f"{server.name}: {len(traces)} trace(s) under {folder}; open them in https://ui.perfetto.dev")
        for trace in traces[-4:]:
            print(f"  {trace.name}  {trace.stat().st_size / 2**20:.1f} MiB")

    @line_magic
    @magic_command()
    @argument("--clean", action="store_true", help="forget servers whose process is gone")
    def vllm_list(self, line: str = "") -> Any:
        """List every registered server (other kernels' and the CLI's too), ended ones flagged."""
        from ..api import list_servers
        from ..process import registry
        from ..status import list_table

        args = parse(self.vllm_list, line)
        if args.clean:
            for name in registry.clean_dead():
                print(f"removed dead entry {name}")
        return list_table(list_servers())

    @line_magic
    @magic_command()
    @argument("url", help="the server's URL, e.g. http://gpu-node:8000")
    @argument("--api-key", help="the server's API key, if it has one")
    @argument("--name", help="registry name (default: from the model)")
    def vllm_attach(self, line: str = "") -> Any:
        """Register a running OpenAI-compatible endpoint; it is detached, never stopped, by us."""
        from ..api import attach

        args = parse(self.vllm_attach, line)
        server = attach(args.url, api_key=args.api_key, name=args.name)
        print(f"Attached {server.name}: {server.served_model_name} at {server.base_url}/v1")
        return server

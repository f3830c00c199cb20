"""IPython magics: serve, track, chat with and stop servers from a notebook without blocking it.

``%load_ext mixvllm_nb`` registers them. Each magic is a thin front over :mod:`mixvllm_nb.api`;
user errors become one-line ``UsageError``s. Heavy modules (openai, torch, vllm) are imported
when a magic first needs them, never at load time.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import HTML, display

from .errors import MixVLLMError, ServerStartError, ServerTimeoutError

SAMPLING_FLAGS = (
    ("--temperature", float, "sampling temperature, 0-2"),
    ("--top-p", float, "nucleus mass, 0 < p <= 1"),
    ("--top-k", int, "keep the k likeliest tokens (-1 = all)"),
    ("--max-tokens", int, "longest answer in tokens"),
    ("--presence-penalty", float, "-2..2"),
    ("--frequency-penalty", float, "-2..2"),
    ("--seed", int, "random seed for sampling"),
)


def sampling_arguments(func):
    """Add the sampling flags (each defaults to the server's generation defaults)."""
    for flag, kind, help_text in reversed(SAMPLING_FLAGS):
        func = argument(flag, type=kind, default=None, help=f"{help_text} (default: the server's)")(func)
    return func


def _sampling(args: Any) -> dict[str, Any]:
    return {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, _, _ in SAMPLING_FLAGS}


def _parse(magic: Any, line: str) -> Any:
    try:
        return parse_argstring(magic, line)
    except UsageError:
        raise
    except SystemExit as exc:  # argparse exits on bad values: make it a one-line UsageError
        raise UsageError(f"invalid arguments: {line!r}") from exc


def _in_notebook() -> bool:
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


@magics_class
class VLLMMagics(Magics):
    """The ``%vllm_*`` magics."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.conversations: dict[str, Any] = {}
        self._metrics_seen: dict[str, tuple[float, float]] = {}

    # -- serving ----------------------------------------------------------------------------------

    @magic_arguments()
    @argument("--config", help="YAML config file (any of the three schemas)")
    @argument("--model", help="Hugging Face id or local folder (default: the embedded SmolLM2-135M)")
    @argument("--trust-remote-code", action="store_true", default=None,
              help="allow the model's own Python code to run (Phi-3 and others; only for models you trust)")
    @argument("--name", help="registry name (default: from the model)")
    @argument("--no-wait", action="store_true", help="return at once; progress keeps updating in this cell")
    @argument("--detach", action="store_true", help="let the server outlive this kernel")
    @argument("--replace", action="store_true", help="stop a server of the same name with another config")
    @argument("--dtype", help="auto, float32, float16, bfloat16")
    @argument("--max-model-len", type=int, help="longest prompt + answer")
    @argument("--gpu-memory", type=float, help="GPU memory utilisation, 0 < x <= 1")
    @argument("--gpus", type=int, help="tensor parallel size")
    @argument("--quantization", help="awq, gptq, squeezellm, fp8")
    @argument("--kv-cache-dtype", help="auto, fp8, fp8_e4m3, fp8_e5m2")
    @argument("--cpu-kv-cache-gib", type=int, help="KV cache GiB on CPU")
    @argument("--max-num-seqs", type=int, help="most sequences per batch")
    @argument("--host", help="bind address (default 127.0.0.1)")
    @argument("--port", type=int, help="port (default: a free one)")
    @argument("--backend", help="auto (default: vLLM where it fits, else llama.cpp), vllm, llamacpp, sglang")
    @argument("--temperature", type=float, help="server default temperature")
    @argument("--max-tokens", type=int, help="server default answer length")
    @argument("--top-p", type=float, help="server default top_p")
    @argument("--top-k", type=int, help="server default top_k")
    @argument("--presence-penalty", type=float, help="server default presence penalty")
    @argument("--frequency-penalty", type=float, help="server default frequency penalty")
    @argument("--startup-timeout", type=float, help="seconds to wait for readiness")
    @argument("--env", action="append", metavar="KEY=VALUE", help="environment variable (repeatable)")
    @argument("--set", action="append", metavar="PATH=VALUE", help="any config field: inference.enforce_eager=false")
    @line_magic
    def vllm_serve(self, line: str = "") -> Any:
        """Start a server (or reuse an identical running one) and show its start-up progress."""
        from .api import serve
        from .config import CLI_OPTION_PATHS, load_server_config, parse_env_assignments

        args = _parse(self.vllm_serve, line)
        values = vars(args)
        overrides = {path: values.get(opt) for opt, path in CLI_OPTION_PATHS.items() if opt in values}
        try:
            for key, value in parse_env_assignments(args.env).items():
                overrides[f"env_vars.{key}"] = value
            for item in args.set or []:
                path, sep, raw = item.partition("=")
                if not sep:
                    raise UsageError(f"--set {item!r}: expected PATH=VALUE, e.g. inference.max_num_seqs=8")
                overrides[path.strip()] = _yaml_scalar(raw)
            config = load_server_config(args.config, overrides)
            result = serve(config, replace=args.replace, wait=False, detach=args.detach, owner_kind="kernel")
        except MixVLLMError as exc:
            raise UsageError(str(exc)) from None
        server = result.server
        if result.outcome == "Reused":
            print(f"Reused {server.name} ({server.state}, {result.engine}) at {server.base_url}/v1 — same config, "
                  "no second model load.")
            return server
        print(f"Launched {server.name} on {result.engine} (pid {server.pid}); log: {server.log_path}")
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
            try:  # the config asks for a chat terminal beside the server (seed 001's terminal.enabled)
                self._open_terminal(server)
            except UsageError as exc:
                print(f"terminal.enabled: no terminal opened: {exc}", file=sys.stderr)
        return server

    @magic_arguments()
    @argument("name", nargs="?", help="server name (default: all)")
    @line_magic
    def vllm_status(self, line: str = "") -> Any:
        """Show name, model, state, URL, pid, uptime, KV cache, requests and tokens/s."""
        from .status import status_table

        args = _parse(self.vllm_status, line)
        try:
            return status_table(args.name, self._metrics_seen)
        except MixVLLMError as exc:
            raise UsageError(str(exc)) from None

    @magic_arguments()
    @argument("name", nargs="?", help="server name (default: the newest)")
    @argument("-n", "--lines", type=int, default=50, help="how many lines")
    @argument("--follow", action="store_true", help="keep printing new lines until interrupted or stopped")
    @line_magic
    def vllm_logs(self, line: str = "") -> None:
        """Print the tail of a server's log; ``--follow`` streams new lines."""
        from .process import logs

        args = _parse(self.vllm_logs, line)
        server = self._server(args.name)
        if server.attached or not server.log_path:
            raise UsageError(f"{server.name} is attached: its log lives on the remote machine")
        print(logs.tail(server.log_path, args.lines))
        if not args.follow:
            return
        try:
            with open(server.log_path, errors="replace") as handle:
                handle.seek(0, 2)
                while True:
                    chunk = handle.read()
                    if chunk:
                        print(chunk, end="", flush=True)
                    elif server.state not in ("starting", "ready", "unhealthy") and not server.record.process_alive():
                        print(f"[{server.name} is {server.state}]")
                        return
                    else:
                        time.sleep(0.3)
        except KeyboardInterrupt:
            print(f"[stopped following {server.name}; the server keeps running]")

    @magic_arguments()
    @argument("name", nargs="?", help="server name")
    @argument("--all", action="store_true", help="stop every registered server")
    @line_magic
    def vllm_stop(self, line: str = "") -> None:
        """Stop a server (or detach an attached one) and confirm nothing is left."""
        from .api import list_servers, stop_server

        args = _parse(self.vllm_stop, line)
        if args.all:
            names = [row["name"] for row in list_servers()]
        elif args.name:
            names = [args.name]
        else:
            names = [self._server(None).name]
        if not names:
            print("no servers registered")
        for name in names:
            try:
                print(stop_server(name))
            except MixVLLMError as exc:
                raise UsageError(str(exc)) from None
            self.conversations.pop(name, None)

    @magic_arguments()
    @argument("action", choices=("start", "stop"), help="start or stop the PyTorch profiler")
    @argument("name", nargs="?", help="server name (default: the newest)")
    @line_magic
    def vllm_profile(self, line: str = "") -> None:
        """Start or stop a server's PyTorch profiler (its config: ``profile: {enabled: true, tool: pytorch}``)."""
        args = _parse(self.vllm_profile, line)
        server = self._server(args.name)
        try:
            folder = server.profile(args.action)
        except MixVLLMError as exc:
            raise UsageError(str(exc)) from None
        if args.action == "start":
            print(f"profiling {server.name}: send it requests, then %vllm_profile stop {server.name}")
        else:
            from pathlib import Path

            traces = sorted(Path(folder).rglob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
            print(f"{server.name}: {len(traces)} trace(s) under {folder}; open them in https://ui.perfetto.dev")
            for trace in traces[-4:]:
                print(f"  {trace.name}  {trace.stat().st_size / 2**20:.1f} MiB")

    @magic_arguments()
    @argument("--clean", action="store_true", help="forget servers whose process is gone")
    @line_magic
    def vllm_list(self, line: str = "") -> Any:
        """List every registered server (other kernels' and the CLI's too), dead ones flagged."""
        from .display import Table, format_uptime, state_badge
        from .process import registry

        args = _parse(self.vllm_list, line)
        if args.clean:
            for name in registry.clean_dead():
                print(f"removed dead entry {name}")
        rows = []
        now = time.time()
        for record in registry.list_records():
            state = "dead" if record.is_dead() else record.state
            owner = record.owner.get("kind", "attached" if record.attached else "?")
            if record.detached:
                owner += " (detached)"
            rows.append([record.name, record.served_model_name, state_badge(state), record.base_url,
                         record.pid, owner, format_uptime(now - record.started_at)])
        return Table(["name", "model", "state", "url", "pid", "started by", "uptime"], rows,
                     title="mixvllm_nb servers", html_cells={"state"})

    @magic_arguments()
    @argument("url", help="the server's URL, e.g. http://gpu-node:8000")
    @argument("--api-key", help="the server's API key, if it has one")
    @argument("--name", help="registry name (default: from the model)")
    @line_magic
    def vllm_attach(self, line: str = "") -> Any:
        """Register a running OpenAI-compatible endpoint; it is detached, never stopped, by us."""
        from .api import attach

        args = _parse(self.vllm_attach, line)
        try:
            server = attach(args.url, api_key=args.api_key, name=args.name)
        except MixVLLMError as exc:
            raise UsageError(str(exc)) from None
        print(f"Attached {server.name}: {server.served_model_name} at {server.base_url}/v1")
        return server

    @magic_arguments()
    @argument("name", nargs="?", help="server name (default: the newest)")
    @argument("--via", choices=("direct", "proxy"), default="direct",
              help="direct: the server's URL and key; proxy: Jupyter's authenticated proxy and token")
    @line_magic
    def vllm_client(self, line: str = "") -> Any:
        """Return an ``openai.OpenAI`` client for the server: direct (its URL and key) or through Jupyter's proxy."""
        from .client import openai_client

        args = _parse(self.vllm_client, line)
        server = self._server(args.name)
        if args.via == "direct":
            return openai_client(server.base_url, server.api_key)
        from .extension.from_kernel import proxy_base_url

        try:
            url, token = proxy_base_url(server.name)
        except RuntimeError as exc:
            raise UsageError(f"--via proxy: {exc}") from None
        return openai_client(url, token)

    # -- talking to a server ------------------------------------------------------------------------

    @magic_arguments()
    @argument("--server", help="server name (default: the newest)")
    @argument("--system", help="system prompt (kept for the conversation)")
    @argument("--new", action="store_true", help="start a new conversation")
    @argument("--image", action="append", help="image file or URL for vision models (repeatable)")
    @sampling_arguments
    @argument("message", nargs="*", help="what to say (or the cell body with %%vllm_chat)")
    @line_cell_magic
    def vllm_chat(self, line: str = "", cell: str | None = None) -> None:
        """Chat with a server; the answer streams in; the conversation is kept until ``--new``."""
        from .client import Conversation, StreamStats, chat_turn, openai_client

        args = _parse(self.vllm_chat, line)
        text = (cell if cell is not None else " ".join(args.message)).strip()
        server = self._server(args.server)
        if args.new or server.name not in self.conversations:
            self.conversations[server.name] = Conversation()
        conversation = self.conversations[server.name]
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
                               stats=stats, **_sampling(args))
            _print_stream(pieces, stats)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except KeyboardInterrupt:
            print("\n[interrupted: the request was cancelled; the server keeps running]")

    @magic_arguments()
    @argument("--server", help="server name (default: the newest)")
    @sampling_arguments
    @argument("prompt", nargs="*", help="the text to continue (or the cell body)")
    @line_cell_magic
    def vllm_generate(self, line: str = "", cell: str | None = None) -> None:
        """Stream a plain completion of a prompt (no chat template)."""
        from .client import StreamStats, openai_client, stream_completion

        args = _parse(self.vllm_generate, line)
        prompt = cell if cell is not None else " ".join(args.prompt)
        if not prompt.strip():
            raise UsageError("nothing to complete: %vllm_generate your prompt")
        server = self._server(args.server)
        client = openai_client(server.base_url, server.api_key)
        try:
            stats = StreamStats()
            _print_stream(stream_completion(client, server.served_model_name, prompt, stats=stats, **_sampling(args)),
                          stats)
        except KeyboardInterrupt:
            print("\n[interrupted: the request was cancelled; the server keeps running]")

    @magic_arguments()
    @argument("name", nargs="?", help="server name (default: the newest)")
    @line_magic
    def vllm_terminal(self, line: str = "") -> Any:
        """Open the terminal chat client for a server in a Jupyter terminal (needs the extension)."""
        args = _parse(self.vllm_terminal, line)
        return self._open_terminal(self._server(args.name))

    def _open_terminal(self, server: Any) -> dict[str, Any]:
        try:
            from .extension.from_kernel import open_terminal
        except ImportError as exc:
            raise UsageError(f"the Jupyter server extension is not available: {exc}") from None
        try:
            info = open_terminal(server.name)
        except (MixVLLMError, RuntimeError, OSError) as exc:
            raise UsageError(str(exc)) from None
        if _in_notebook():
            display(HTML(f"Terminal <b>{info['name']}</b> runs mixvllm-chat for {server.name}: "
                         f"<a href='{info['url']}' target='_blank'>open it</a>"))
        else:
            print(f"terminal {info['name']}: {info['url']}")
        return info

    @magic_arguments()
    @argument("model", nargs="?", help="hub id in the local cache, folder or config.json (default: embedded model)")
    @argument("--dtype", default=None, help="auto, float32, bfloat16, float16")
    @argument("--quantization", default=None, help="awq, gptq, fp8")
    @argument("--kv-cache-dtype", default="auto", help="auto, fp8, fp8_e4m3, fp8_e5m2")
    @argument("--max-model-len", type=int, default=None, help="longest prompt + answer")
    @argument("--gpus", type=int, default=1, help="tensor parallel size")
    @argument("--pp", type=int, default=1, help="pipeline parallel size")
    @argument("--gpu-memory", type=float, default=0.9, help="GPU memory utilisation")
    @argument("--gpu", default=None, help="a GPU name (L4, A100-80GB, H100, ...) or its memory in GiB")
    @argument("--cpu-kv-cache-gib", type=int, default=None, help="plan the CPU build with this KV cache")
    @argument("--plot", action="store_true", help="also draw the memory breakdown")
    @line_magic
    def vllm_plan(self, line: str = "") -> Any:
        """Plan memory before launching: weights, KV cache tokens, max concurrency, advice if it does not fit."""
        from .gpu import detect_gpus
        from .models import resolve_default_model
        from .plan import plan

        args = _parse(self.vllm_plan, line)
        gpu: str | float | None = args.gpu
        if gpu is not None:
            try:
                gpu = float(gpu)
            except ValueError:
                pass  # a name from the GPU table
        elif args.cpu_kv_cache_gib is None and detect_gpus():
            gpu = detect_gpus()[0].total_memory / 2**30
        on_cpu = gpu is None
        try:
            model = args.model or resolve_default_model().model
            result = plan(
                model,
                dtype=args.dtype or ("float32" if on_cpu else "auto"),
                quantization=args.quantization,
                kv_cache_dtype=args.kv_cache_dtype,
                max_model_len=args.max_model_len,
                tensor_parallel_size=args.gpus,
                pipeline_parallel_size=args.pp,
                gpu_memory_utilization=args.gpu_memory,
                gpu=gpu,
                cpu_kv_cache_gib=(args.cpu_kv_cache_gib or 1) if on_cpu else None,
                enforce_eager=on_cpu,
            )
        except (ValueError, MixVLLMError) as exc:
            raise UsageError(str(exc)) from None
        if args.plot:
            result.plot()
        return result

    @magic_arguments()
    @argument("name", nargs="?", help="server name (default: the newest)")
    @argument("--levels", default="1,2,4,8,16,32", help="concurrency levels, comma-separated")
    @argument("--max-tokens", type=int, default=64, help="answer length per request")
    @argument("--via", choices=["direct", "proxy"], default="direct", help="direct, or through the Jupyter proxy")
    @line_magic
    def vllm_bench(self, line: str = "") -> Any:
        """Sweep concurrency against a server: requests/s, tokens/s, time to first token, inter-token latency."""
        from .bench import bench

        args = _parse(self.vllm_bench, line)
        try:
            levels = tuple(int(v) for v in args.levels.split(",") if v.strip())
        except ValueError:
            raise UsageError(f"--levels {args.levels!r}: expected integers like 1,2,4,8") from None
        if not levels or min(levels) < 1:
            raise UsageError(f"--levels {args.levels!r}: every level must be >= 1")
        server = self._server(args.name)
        base_url, key = server.base_url, server.api_key
        if args.via == "proxy":
            try:
                from .extension.from_kernel import proxy_base_url

                base_url, key = proxy_base_url(server.name)
            except (ImportError, MixVLLMError, RuntimeError, OSError) as exc:
                raise UsageError(f"--via proxy: {exc}") from None
        result = bench(base_url, key, server.served_model_name, levels=levels, max_tokens=args.max_tokens,
                       path=args.via, progress=lambda text: print(text, flush=True))
        if result.interrupted:
            print(f"interrupted: kept {len(result.levels)} finished level(s)")
        return result

    @magic_arguments()
    @argument("name", nargs="?", help="server to select (default: the newest, or none)")
    @line_magic
    def vllm_panel(self, line: str = "") -> Any:
        """Show the control panel: launch, memory and KV cache, sampling sliders, streaming chat, logs."""
        from .panel import panel

        args = _parse(self.vllm_panel, line)
        try:
            return panel(args.name)
        except MixVLLMError as exc:
            raise UsageError(str(exc)) from None

    # -- helpers -----------------------------------------------------------------------------------

    def _server(self, name: str | None) -> Any:
        from .api import get_server

        try:
            return get_server(name)
        except MixVLLMError as exc:
            raise UsageError(str(exc)) from None


def _print_stream(pieces: Any, stats: Any) -> str:
    """Print streamed pieces as they arrive (each flush is one output update), then what the
    answer cost (tokens, time to first token, tokens/s); return the text."""
    text = []
    for piece in pieces:
        text.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write(f"\n[{stats.summary()}]\n")
    return "".join(text)


def _yaml_scalar(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


class StartupProgress:
    """Shows a starting server's phase (parsed from its log) in the cell that started it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.started = time.monotonic()
        self.handle = display(HTML(self._html()), display_id=True) if _in_notebook() else None
        self._last = ""

    def _snapshot(self) -> tuple[str, str]:
        from .process import logs

        text = logs.read_text(self.server.log_path)
        phase = "ready" if self.server.state == "ready" else logs.phase(text)
        kv = logs.kv_cache_report(text)
        detail = f"KV cache {kv}" if kv else ""
        if self.server.state == "ready":
            detail = f"{self.server.base_url}/v1 · " + detail if detail else f"{self.server.base_url}/v1"
        elif self.server.state in ("crashed", "exited", "stopped"):
            phase, detail = self.server.state, self.server.error or "see %vllm_logs"
        return phase, detail

    def _html(self) -> str:
        from .display import progress_html

        phase, detail = self._snapshot()
        return progress_html(self.server.name, phase, detail, time.monotonic() - self.started)

    def update(self) -> None:
        """Redraw the progress (HTML in a notebook, a printed line when the phase changes)."""
        if self.handle is not None:
            self.handle.update(HTML(self._html()))
            return
        from .display import progress_text

        phase, detail = self._snapshot()
        line = progress_text(self.server.name, phase, detail)
        if phase != self._last:
            print(line, flush=True)
            self._last = phase

    def wait(self) -> None:
        """Block until ready, redrawing; raises the server's start errors."""
        done = threading.Event()
        error: list[BaseException] = []

        def waiter() -> None:
            try:
                self.server.wait_until_ready()
            except BaseException as exc:  # handed to the main thread below
                error.append(exc)
            finally:
                done.set()

        threading.Thread(target=waiter, daemon=True).start()
        while not done.wait(0.5):
            self.update()
        self.update()
        if error:
            raise error[0]

    def follow_in_background(self) -> None:
        """Keep redrawing from a thread until the server is ready or has failed."""

        # The server's heartbeat moves it out of "starting" (ready, crashed or timed out).
        def redraw() -> None:
            while self.server.state == "starting":
                self.update()
                time.sleep(0.5)
            self.update()

        threading.Thread(target=redraw, daemon=True, name=f"mixvllm-progress-{self.server.name}").start()


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
    ipython.register_magics(VLLMMagics)
    cleanup = ipython.input_transformer_manager.cleanup_transforms
    if keep_question_marks not in cleanup:
        cleanup.append(keep_question_marks)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the servers this kernel owns (detached ones stay)."""
    from .process.server import live_servers

    cleanup = ipython.input_transformer_manager.cleanup_transforms
    if keep_question_marks in cleanup:
        cleanup.remove(keep_question_marks)
    for server in live_servers():
        if not server.detach:
            server.stop()


__all__ = ["VLLMMagics", "load_ipython_extension", "unload_ipython_extension"]

"""Magics that plan, measure and show: the memory planner, the concurrency sweep, the control panel."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument

from .chat import proxy_endpoint
from .common import find_server, magic_command, parse


def _plan_specs() -> list[Any]:
    """%vllm_plan's flags are the config's inference ones (the model is its first word)."""
    from ..config.options import PLAN_OPTIONS

    return [(o.flags, o.argparse_kwargs()) for o in PLAN_OPTIONS if o.path != "model.name"]


@magics_class
class ToolMagics(Magics):
    """``%vllm_plan``, ``%vllm_bench``, ``%vllm_panel``."""

    @line_magic
    @magic_command(_plan_specs)
    @argument("model", nargs="?", help="hub id in the local cache, folder or config.json (default: embedded model)")
    @argument("--gpu", default=None, help="plan for this GPU: a name (L4, A100-80GB, H100, ...) or its memory in GiB")
    @argument("--plot", action="store_true", help="also draw the memory breakdown")
    def vllm_plan(self, line: str = "") -> Any:
        """Plan memory before launching: weights, KV cache tokens, max concurrency, advice if it does not fit."""
        from ..config import load_server_config
        from ..config.options import PLAN_OPTIONS, overrides_from
        from ..models import resolve_default_model
        from ..plan import plan_for_config

        args = parse(self.vllm_plan, line)
        gpu: str | float | None = args.gpu
        if gpu is not None:
            try:
                gpu = float(gpu)
            except ValueError:
                pass  # a name from the GPU table
        overrides = overrides_from(vars(args), PLAN_OPTIONS)
        overrides["model.name"] = args.model or resolve_default_model().model
        try:
            result = plan_for_config(load_server_config(None, overrides), gpu=gpu)
        except ValueError as exc:  # the planner's own one-line errors (unknown GPU, unreadable config)
            raise UsageError(str(exc)) from None
        if args.plot:
            result.plot()
        return result

    @line_magic
    @magic_command()
    @argument("name", nargs="?", help="server name (default: the newest)")
    @argument("--levels", default="1,2,4,8,16,32", help="concurrency levels, comma-separated")
    @argument("--max-tokens", type=int, default=64, help="answer length per request")
    @argument("--via", choices=["direct", "proxy"], default="direct", help="direct, or through the Jupyter proxy")
    def vllm_bench(self, line: str = "") -> Any:
        """Sweep concurrency against a server: requests/s, tokens/s, time to first token, inter-token latency."""
        from ..bench import bench

        args = parse(self.vllm_bench, line)
        try:
            levels = tuple(int(v) for v in args.levels.split(",") if v.strip())
        except ValueError:
            raise UsageError(f"--levels {args.levels!r}: expected integers like 1,2,4,8") from None
        if not levels or min(levels) < 1:
            raise UsageError(f"--levels {args.levels!r}: every level must be >= 1")
        server = find_server(args.name)
        base_url, key = server.base_url, server.api_key
        if args.via == "proxy":
            base_url, key = proxy_endpoint(server.name)
        result = bench(base_url, key, server.served_model_name, levels=levels, max_tokens=args.max_tokens,
                       path=args.via, progress=lambda text: print(text, flush=True))
        if result.interrupted:
            print(f"interrupted: kept {len(result.levels)} finished level(s)")
        return result

    @line_magic
    @magic_command()
    @argument("name", nargs="?", help="server to select (default: the newest, or none)")
    def vllm_panel(self, line: str = "") -> Any:
        """Show the control panel: launch, memory and KV cache, sampling sliders, streaming chat, logs."""
        from ..panel import panel

        args = parse(self.vllm_panel, line)
        return panel(args.name)

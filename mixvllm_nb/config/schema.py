"""The config's sections as pydantic models: each field's description, bounds, choices and flag.

A field a user may set from a command line declares its flag here (``option(..., flag="--gpus")``);
the magics, ``mixvllm-serve``, ``%vllm_plan``, the panel and the terminal chat are derived from
these declarations (:mod:`mixvllm_nb.config.options`), so adding an option means adding a field.
The YAML schema is the models' own: ``model``, ``inference``, ``server``, ``generation_defaults``, ...
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import re
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

Dtype = Literal["auto", "float32", "float16", "bfloat16", "half", "float"]
Quantization = str  # one of quantization_methods(): the installed vLLM's own list
# What vLLM accepted for years; the list of the vLLM installed here (read from its source) replaces it.
_KNOWN_QUANTIZATIONS = ("awq", "gptq", "fp8", "squeezellm")
KVCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16"]
PositiveInt = Annotated[int, Field(ge=1)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# A registry name (and a backend name): letters, digits, '_', '.', '-', never a slash or a host.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


@functools.cache
def quantization_methods() -> tuple[str, ...]:
    """Return the ``--quantization`` methods the installed vLLM accepts, read from its source without importing it
    (importing vLLM takes seconds); without vLLM, the methods vLLM has long known."""
    spec = importlib.util.find_spec("vllm")  # finds the package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        source = Path(folder) / "model_executor" / "layers" / "quantization" / "__init__.py"
        try:
            tree = ast.parse(source.read_text())
        except (OSError, SyntaxError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "QuantizationMethods":
                names = [elt.value for elt in getattr(node.value.slice, "elts", [])
                         if isinstance(elt, ast.Constant) and isinstance(elt.value, str)]
                if names:
                    return tuple(names)
    return _KNOWN_QUANTIZATIONS


def option(default: Any = None, description: str = "", *, flag: str | tuple[str, ...] | None = None,
           choices: tuple[str, ...] = (), **constraints: Any) -> Any:
    """Return a pydantic ``Field`` that also declares its command-line flag(s), first one shown in help, and
    its choices when they are not a ``Literal`` (a list known only at run time)."""
    extra: dict[str, Any] = {"flags": [flag] if isinstance(flag, str) else list(flag)} if flag else {}
    if choices:
        extra["choices"] = list(choices)
    return Field(default, description=description, json_schema_extra=extra or None, **constraints)


class _Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str | None = option(
        None, "Hugging Face hub id or local folder (default: the embedded SmolLM2-135M-Instruct)",
        flag=("--model", "--model-path"),
    )
    served_model_name: str | None = Field(
        None, description="The name clients use in requests; defaults to the model name."
    )
    trust_remote_code: bool = option(
        False, "allow the model's own Python code to run (Phi-3 and others; only for models you trust)",
        flag="--trust-remote-code",
    )
    tokenizer: str | None = Field(None, description="Tokenizer id or folder, if not the model's.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")

    @field_validator("name", "served_model_name", "tokenizer", "revision")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank; leave it out to use the default")
        return value


class InferenceConfig(_Section):
    tensor_parallel_size: PositiveInt = option(
        1, "GPUs that split each layer (tensor parallel size)", flag=("--gpus", "--tensor-parallel-size"))
    pipeline_parallel_size: PositiveInt = option(
        1, "stages that split the layers (pipeline parallel size)", flag=("--pp", "--pipeline-parallel-size"))
    data_parallel_size: PositiveInt = Field(1, description="Independent replicas of the model.")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None, description="'mp' on one node, 'ray' for multi-node serving on a running Ray cluster."
    )
    gpu_memory_utilization: float = option(
        0.9, "fraction of each GPU's memory vLLM may use, 0 < x <= 1",
        flag=("--gpu-memory", "--gpu-memory-utilization"), gt=0.0, le=1.0,
    )
    max_model_len: PositiveInt | None = option(
        None, "longest prompt + answer in tokens (default: the model's)", flag="--max-model-len")
    dtype: Dtype | None = option(
        None, "weights and activations dtype (default: float32 on CPU, auto on GPU)", flag="--dtype")
    quantization: Quantization | None = option(
        None, "pre-quantized weights format (null: none)", flag="--quantization", choices=quantization_methods())
    kv_cache_dtype: KVCacheDtype = option("auto", "KV cache element type", flag="--kv-cache-dtype")
    max_num_seqs: PositiveInt | None = option(None, "most sequences in one batch", flag="--max-num-seqs")
    max_num_batched_tokens: PositiveInt | None = Field(
        None, description="Most tokens in one scheduler step."
    )
    enforce_eager: bool | None = Field(
        None, description="Skip graph capture/compilation; default: true on CPU (starts ~2x faster)."
    )
    cpu_kv_cache_gib: int = option(
        1, "KV cache size on CPU in whole GiB (VLLM_CPU_KVCACHE_SPACE)", flag="--cpu-kv-cache-gib", ge=1, le=4096)
    enable_sleep_mode: bool = option(
        False, "let %vllm_sleep free GPU memory between uses (vLLM on CUDA only; opens vLLM's development routes, "
        "behind the key)", flag="--enable-sleep-mode")
    sleep_after_idle_minutes: float | None = option(
        None, "with sleep mode: sleep after this many minutes without a request (the next request wakes it)",
        flag="--sleep-after-idle", gt=0)

    @field_validator("quantization", mode="before")
    @classmethod
    def _known_quantization(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("null", "none", ""):
            return None  # `--quantization null` from a command line
        if value is not None and value not in quantization_methods():
            raise ValueError("allowed: " + ", ".join(repr(name) for name in quantization_methods()))
        return value


def new_api_key() -> str:
    """Return a random key that is safe anywhere a flag's value goes.

    Hex, because a url-safe token starts with ``-`` one time in 64, and ``--api-key -x...`` then reads as
    a missing value (``%vllm_attach URL --api-key KEY`` failed that way).
    """
    return secrets.token_hex(24)


class EndpointConfig(_Section):
    """Where the server listens and what it is called: the ``server:`` section."""

    host: str = option("127.0.0.1", "bind address (default 127.0.0.1: loopback only)", flag="--host")
    port: int | None = option(None, "TCP port 1024-65535 (default: a free one)", flag="--port", ge=1024, le=65535)
    api_key: SecretStr | None = Field(
        None, description="Key clients must send; empty generates a random one per launch."
    )
    name: str | None = option(
        None, "registry name: letters, digits, '_', '.', '-' (default: from the model)", flag="--name",
        pattern=NAME_PATTERN,
    )
    workers: PositiveInt = Field(1, description="API server processes (vLLM --api-server-count).")


class GenerationDefaults(_Section):
    """Sampling every request gets unless it sets its own: applied by the engine itself."""

    temperature: float | None = option(None, "sampling temperature, 0 = greedy", flag="--temperature",
                                       ge=0.0, le=2.0)
    top_p: float | None = option(None, "nucleus mass", flag="--top-p", gt=0.0, le=1.0)
    top_k: int | None = option(None, "keep the k likeliest tokens; -1 = all", flag="--top-k", ge=-1)
    max_tokens: PositiveInt | None = option(None, "longest answer in tokens", flag="--max-tokens", le=1_000_000)
    presence_penalty: Penalty | None = option(None, "penalise any repeat", flag="--presence-penalty")
    frequency_penalty: Penalty | None = option(None, "penalise by count", flag="--frequency-penalty")

    @field_validator("top_k")
    @classmethod
    def _top_k_not_zero(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("top_k must be -1 (all tokens) or >= 1")
        return value

    def as_request_params(self) -> dict[str, Any]:
        """Return the defaults that are set, as OpenAI request parameters."""
        return self.model_dump(exclude_none=True)


class TerminalConfig(_Section):
    enabled: bool = option(
        False, "open a Jupyter terminal running mixvllm-chat once the server is ready (in a shell, mixvllm-serve "
        "says how to start the chat)", flag="--enable-terminal",
    )
    auto_start_chat: bool = Field(True, description="Start mixvllm-chat in the new terminal.")
    # Seed 001 ran its own web terminal server on host:port. The chat opens in Jupyter's own terminals
    # instead (behind Jupyter's login), so these are accepted, noted once, and not used.
    host: str | None = Field(None, description="Seed 001's terminal server address: not used (Jupyter's terminals).")
    port: int | None = option(None, "seed 001's terminal server port: not used, the chat opens in a Jupyter "
                              "terminal", flag="--terminal-port", ge=1, le=65535)

    def unused_note(self) -> str:
        """Return one line about seed 001's terminal address when one is given ('' otherwise)."""
        given = [f"{key} {value}" for key, value in (("host", self.host), ("port", self.port)) if value is not None]
        if not given:
            return ""
        return (f"terminal.{' and terminal.'.join(given)}: not used; the chat opens in a Jupyter terminal "
                "(%vllm_terminal, the panel), behind Jupyter's login, instead of a terminal server of its own.")


class ProfileConfig(_Section):
    enabled: bool = False
    tool: Literal["nsys", "pytorch", "amd"] = Field("pytorch", description="nsys, pytorch or amd.")
    output_dir: Path = Field(Path("profiles"), description="Where traces are written.")
    args: list[str] = Field(default_factory=list, description="Extra arguments for nsys/rocprof.")


# The adapter ranks vLLM accepts for --max-lora-rank.
LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]


class LoraConfig(_Section):
    """LoRA adapters: the ``lora:`` section (vLLM only; adapters can also be loaded while it runs)."""

    enabled: bool = option(False, "serve LoRA adapters (and allow loading them while the server runs)",
                           flag="--enable-lora")
    max_loras: PositiveInt = option(1, "adapters in one batch at a time", flag="--max-loras")
    max_lora_rank: LoraRank = option(16, "largest adapter rank that can be loaded", flag="--max-lora-rank")
    modules: dict[str, str] = Field(
        default_factory=dict, description="Adapters loaded at launch: {name: folder of a peft adapter}."
    )

    @field_validator("modules")
    @classmethod
    def _module_names(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for name, path in value.items():
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"adapter name {name!r}: letters, digits, '_', '.', '-' (up to 64)")
            if not str(path).strip():
                raise ValueError(f"adapter {name!r}: the path must not be blank")
        return value


@functools.cache
def tool_call_parsers() -> tuple[str, ...]:
    """Return the ``--tool-call-parser`` names the installed vLLM registers, read from its source without importing
    it; () without vLLM (any name is then passed on, and vLLM says if it does not know it)."""
    spec = importlib.util.find_spec("vllm")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            tree = ast.parse((Path(folder) / "tool_parsers" / "__init__.py").read_text())
        except (OSError, SyntaxError):
            continue
        for node in tree.body:
            target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
            if getattr(target, "id", "") == "_TOOL_PARSERS_TO_REGISTER" and isinstance(node.value, ast.Dict):
                return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return ()


class ToolsConfig(_Section):
    """Tool calling (OpenAI ``tools``, the chat's MCP tools): the ``tools:`` section.

    vLLM takes all of it; SGLang only ``chat_template`` (its parsers have other names); llama.cpp none.
    """

    enable_auto_tool_choice: bool = option(
        False, "let the model call tools (OpenAI tools, MCP tools in the chat): vLLM's tool calling, read with "
        "--tool-call-parser (default hermes)", flag="--enable-auto-tool-choice",
    )
    tool_call_parser: str | None = option(
        None, "how vLLM reads tool calls in the model's text (default with tool choice on: hermes, for "
        "SmolLM2/Qwen/Hermes-style templates; llama3_json for Llama 3, mistral for Mistral)",
        flag="--tool-call-parser", choices=tool_call_parsers(),
    )
    chat_template: str | None = option(
        None, "a Jinja chat template file replacing the model's (one that lists the tools to the model)",
        flag="--chat-template",
    )

    @field_validator("tool_call_parser")
    @classmethod
    def _known_parser(cls, value: str | None) -> str | None:
        if value is not None and tool_call_parsers() and value not in tool_call_parsers():
            raise ValueError("allowed: " + ", ".join(tool_call_parsers()))
        return value


class ClusterConfig(_Section):
    """Serve on a Ray cluster as a Ray job instead of on this machine: the ``cluster:`` section (vLLM only)."""

    kind: Literal["ray"] = Field("ray", description="The cluster's kind (Ray, through its job API).")
    address: str | None = option(
        None, "a Ray cluster's job API, http://HEAD:8265: serve there as a Ray job instead of on this machine",
        flag="--cluster",
    )
    python: str = option(
        "python", "the Python on the cluster's nodes that has vLLM (a name on their PATH or a full path)",
        flag="--cluster-python", min_length=1,
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="Ray's runtime_env for the job (pip, env_vars, ...); working_dir is ours.",
    )

    @field_validator("address")
    @classmethod
    def _job_api_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^\s/:]+(:\d+)?/?$", value.strip()):
            raise ValueError("give the URL of the cluster's job API (its dashboard), such as http://HEAD:8265")
        return value.strip().rstrip("/")


class ServeConfig(_Section):
    """Everything needed to launch one inference server, validated."""

    backend: str = option(
        "auto", "engine: auto (vLLM where it fits, else llama.cpp), vllm, llamacpp, sglang or a registered one",
        flag="--backend", pattern=NAME_PATTERN,
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    server: EndpointConfig = Field(default_factory=EndpointConfig)
    generation_defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    terminal: TerminalConfig = Field(default_factory=TerminalConfig)
    env_vars: dict[str, str] = Field(default_factory=dict, description="Extra environment.")
    extra_args: list[str] | dict[str, Any] = Field(
        default_factory=list,
        description="More backend flags: a list ['--flag', 'value'] or a dict {flag: value}.",
    )
    startup_timeout: float = option(600.0, "seconds to wait for readiness", flag="--startup-timeout", gt=0)
    heartbeat_interval: float = Field(5.0, gt=0, description="Seconds between health checks.")
    heartbeat_timeout: float = Field(
        30.0, gt=0, description="Seconds of failed health checks before 'unhealthy'."
    )
    log_dir: Path | None = option(None, "folder for the server log (default: the state dir)", flag="--log-dir")
    debug_mode: bool = Field(False, description="Report every pid checked when stopping.")
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @field_validator("env_vars", mode="before")
    @classmethod
    def _env_as_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): _env_value(v) for k, v in value.items()}
        return value

    @field_validator("extra_args", mode="before")
    @classmethod
    def _extra_args_as_strings(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [str(item) for item in value]
        return value

    def identity(self, *, sampling: bool = True) -> str:
        """Return a hash of what makes two launches equivalent (name, port and key excluded).

        Two configs with the same identity serve the same model the same way, so a running
        server can be reused instead of loading the model twice. ``sampling=False`` leaves the
        generation defaults out: the same engine, answering with other defaults.
        """
        exclude: dict[str, Any] = {"server": {"api_key", "name", "port"}}
        if not sampling:
            exclude["generation_defaults"] = True
        data = self.model_dump(mode="json", exclude=exclude)
        for volatile in ("startup_timeout", "heartbeat_interval", "heartbeat_timeout", "debug_mode"):
            data.pop(volatile, None)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def public_dict(self) -> dict[str, Any]:
        """Return the config as JSON-ready data with the API key left out."""
        return self.model_dump(mode="json", exclude={"server": {"api_key"}})


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)

"""Validated server configuration: pydantic models, YAML loading in three schemas, CLI > YAML > defaults.

Raw dicts (YAML, JSON bodies, keyword arguments) become a :class:`ServeConfig` here and nowhere
else. Every error is a :class:`~mixvllm_nb.errors.ConfigError` whose one-line message names the
field path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigError

Dtype = Literal["auto", "float32", "float16", "bfloat16", "half", "float"]
Quantization = Literal["awq", "gptq", "squeezellm", "fp8"]
KVCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16"]
PositiveInt = Annotated[int, Field(ge=1)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str | None = Field(
        None,
        description="Hugging Face hub id or local folder; empty means the embedded default model "
        "(SmolLM2-135M-Instruct).",
    )
    served_model_name: str | None = Field(
        None, description="The name clients use in requests; defaults to the model name."
    )
    trust_remote_code: bool = Field(False, description="Allow the model's own Python code to run.")
    tokenizer: str | None = Field(None, description="Tokenizer id or folder, if not the model's.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")

    @field_validator("name", "served_model_name", "tokenizer", "revision")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank; leave it out to use the default")
        return value


class InferenceConfig(_Section):
    tensor_parallel_size: PositiveInt = Field(1, description="GPUs that split each layer.")
    pipeline_parallel_size: PositiveInt = Field(1, description="Stages that split the layers.")
    data_parallel_size: PositiveInt = Field(1, description="Independent replicas of the model.")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None, description="'mp' on one node, 'ray' for multi-node serving on a running Ray cluster."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="Fraction of each GPU's memory vLLM may use (0 < x <= 1)."
    )
    max_model_len: PositiveInt | None = Field(None, description="Longest prompt + answer in tokens.")
    dtype: Dtype | None = Field(
        None, description="Weights and activations dtype; default: auto on GPU, float32 on CPU."
    )
    quantization: Quantization | None = Field(None, description="Pre-quantized weights format.")
    kv_cache_dtype: KVCacheDtype = Field("auto", description="KV cache element type.")
    max_num_seqs: PositiveInt | None = Field(None, description="Most sequences in one batch.")
    max_num_batched_tokens: PositiveInt | None = Field(
        None, description="Most tokens in one scheduler step."
    )
    enforce_eager: bool | None = Field(
        None, description="Skip graph capture/compilation; default: true on CPU (starts ~2x faster)."
    )
    cpu_kv_cache_gib: int = Field(
        1, ge=1, le=4096, description="KV cache size on CPU, whole GiB (VLLM_CPU_KVCACHE_SPACE)."
    )


class ServerConfig(_Section):
    host: str = Field("127.0.0.1", description="Bind address; loopback unless you ask otherwise.")
    port: int | None = Field(
        None, ge=1024, le=65535, description="TCP port 1024-65535; empty picks a free one."
    )
    api_key: SecretStr | None = Field(
        None, description="Key clients must send; empty generates a random one per launch."
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Registry name (letters, digits, '_', '.', '-'); default from the model.",
    )
    workers: PositiveInt = Field(1, description="API server processes (vLLM --api-server-count).")


class GenerationDefaults(_Section):
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy, up to 2.")
    max_tokens: PositiveInt | None = Field(None, description="Longest answer in tokens.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus mass, 0 < top_p <= 1.")
    top_k: int | None = Field(None, ge=-1, description="Keep the k likeliest tokens; -1 = all.")
    presence_penalty: Penalty | None = Field(None, description="-2..2, penalise any repeat.")
    frequency_penalty: Penalty | None = Field(None, description="-2..2, penalise by count.")

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
    enabled: bool = Field(
        False, description="Open a Jupyter terminal running mixvllm-chat when %vllm_serve has waited for the "
        "server to be ready (in a shell, mixvllm-serve says how to start the chat)."
    )
    auto_start_chat: bool = Field(True, description="Start mixvllm-chat in the new terminal.")


class ProfileConfig(_Section):
    enabled: bool = False
    tool: Literal["nsys", "pytorch", "amd"] = Field("pytorch", description="nsys, pytorch or amd.")
    output_dir: Path = Field(Path("profiles"), description="Where traces are written.")
    args: list[str] = Field(default_factory=list, description="Extra arguments for nsys/rocprof.")


class ServeConfig(_Section):
    """Everything needed to launch one inference server, validated."""

    backend: str = Field(
        "auto",
        description="auto (vLLM where it fits, else llama.cpp), vllm, sglang, llamacpp, or a registered "
        "custom backend.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    generation_defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    terminal: TerminalConfig = Field(default_factory=TerminalConfig)
    env_vars: dict[str, str] = Field(default_factory=dict, description="Extra environment.")
    extra_args: list[str] | dict[str, Any] = Field(
        default_factory=list,
        description="More backend flags: a list ['--flag', 'value'] or a dict {flag: value}.",
    )
    startup_timeout: float = Field(600.0, gt=0, description="Seconds to wait for readiness.")
    heartbeat_interval: float = Field(5.0, gt=0, description="Seconds between health checks.")
    heartbeat_timeout: float = Field(
        30.0, gt=0, description="Seconds of failed health checks before 'unhealthy'."
    )
    log_dir: Path | None = Field(None, description="Where server logs go; default: state dir.")
    debug_mode: bool = Field(False, description="Report every pid checked when stopping.")
    profile: ProfileConfig = Field(default_factory=ProfileConfig)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from .backends import backend_names

        if value not in backend_names():
            raise ValueError(f"unknown backend; allowed: {', '.join(backend_names())}")
        return value

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

    def identity(self) -> str:
        """Return a hash of what makes two launches equivalent (name, port and key excluded).

        Two configs with the same identity serve the same model the same way, so a running
        server can be reused instead of loading the model twice.
        """
        data = self.model_dump(mode="json", exclude={"server": {"api_key", "name", "port"}})
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


# -- the three YAML schemas of the seeds, normalised to ServeConfig's ------------------------------

# (section, alias) -> canonical name inside the same section (seed 003's short names).
_SECTION_ALIASES: dict[str, dict[str, str]] = {
    "inference": {"gpus": "tensor_parallel_size", "gpu_memory": "gpu_memory_utilization"},
}
# top-level alias -> dotted canonical path (seed 002's flat form and seed 003's names).
_TOP_ALIASES: dict[str, str] = {
    "generation": "generation_defaults",
    "port": "server.port",
    "host": "server.host",
    "api_key": "server.api_key",
    "name": "server.name",
    "output_dir": "log_dir",
    # Seed 004's flat load request (POST /api/v1/inference/load): {"model_path", "tensor_parallel_size", ...}.
    "model_path": "model.name",
    "trust_remote_code": "model.trust_remote_code",
    "tensor_parallel_size": "inference.tensor_parallel_size",
    "gpu_memory_utilization": "inference.gpu_memory_utilization",
    "quantization": "inference.quantization",
    "max_model_len": "inference.max_model_len",
    "dtype": "inference.dtype",
}


def normalize_config_dict(raw: dict[str, Any]) -> dict[str, Any]:
    """Return ``raw`` rewritten into ServeConfig's schema, accepting every seed's spelling.

    Seed 001: nested ``inference.tensor_parallel_size`` / ``generation_defaults``; seed 003:
    ``inference.gpus`` / ``gpu_memory`` / ``generation``; seed 002: flat ``model: name``,
    ``port``, ``output_dir``, ``config.api_server_args`` (or ``server_args``); seed 004: a flat
    load request (``model_path``, ``tensor_parallel_size``, ``quantization``, ...). Giving one
    field under two spellings is an error rather than a silent choice.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(raw).__name__}")
    data = copy.deepcopy(raw)
    if isinstance(data.get("model"), str):
        data["model"] = {"name": data["model"]}
    for alias, target in _TOP_ALIASES.items():
        if alias in data:
            _move(data, alias, target)
    backend_config = data.pop("config", None)
    if backend_config is not None:
        if not isinstance(backend_config, dict):
            raise ConfigError("config: expected a mapping with api_server_args or server_args")
        unknown = set(backend_config) - {"api_server_args", "server_args"}
        if unknown:
            raise ConfigError(
                f"config.{sorted(unknown)[0]}: unknown key; allowed: api_server_args, server_args"
            )
        for key in ("api_server_args", "server_args"):
            if key in backend_config:
                if "extra_args" in data:
                    raise ConfigError(
                        f"config.{key} and extra_args are the same setting; give only one"
                    )
                data["extra_args"] = backend_config[key]
    for section, aliases in _SECTION_ALIASES.items():
        sub = data.get(section)
        if isinstance(sub, dict):
            for alias, canonical in aliases.items():
                if alias in sub:
                    if canonical in sub:
                        raise ConfigError(
                            f"{section}.{alias} and {section}.{canonical} are the same setting; "
                            "give only one"
                        )
                    sub[canonical] = sub.pop(alias)
    return data


def _move(data: dict, alias: str, target: str) -> None:
    """Move ``data[alias]`` to the dotted ``target`` path, refusing to overwrite a value."""
    value = data.pop(alias)
    *parents, leaf = target.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{part}: expected a mapping, got {type(node).__name__}")
    if leaf in node:
        raise ConfigError(f"{alias} and {target} are the same setting; give only one")
    node[leaf] = value


def config_from_dict(raw: dict[str, Any], *, source: str = "config") -> ServeConfig:
    """Return a validated ServeConfig from a dict in any of the accepted schemas."""
    data = normalize_config_dict(raw)
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """Return pydantic's errors as one line: ``source: path: rule (got value)``."""
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(root)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = f"unknown key; allowed: {_allowed_keys(err['loc'])}"
        elif err["type"] == "literal_error":
            message = message.replace("Input should be", "allowed:")
        elif err["type"] in _BOUND_ERRORS:
            message = f"allowed: {_bounds(err['loc']) or _ctx_bound(err) or message}"
        elif err["type"] == "string_pattern_mismatch":
            message = f"must match the pattern {err['ctx']['pattern']}"
        else:
            message = message.removeprefix("Value error, ")
        shown = err.get("input")
        got = "" if err["type"] in {"extra_forbidden", "missing"} else f" (got {shown!r})"
        parts.append(f"{path}: {message}{got}")
    return f"{source}: " + "; ".join(parts)


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _field_info(loc: tuple) -> Any:
    model: type[BaseModel] = ServeConfig
    info = None
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        model = info.annotation
    return info


def _bounds(loc: tuple) -> str:
    """Return a field's numeric range as text, e.g. ``> 0 and <= 1``."""
    info = _field_info(loc)
    if info is None:
        return ""
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    rules = [
        f"{symbol} {getattr(meta, attr)}"
        for meta in info.metadata
        for attr, symbol in symbols.items()
        if getattr(meta, attr, None) is not None
    ]
    if not rules and info.annotation is not None:
        for arg in getattr(info.annotation, "__args__", ()):  # Optional[Annotated[int, ...]]
            for field_meta in getattr(arg, "__metadata__", ()):
                for meta in getattr(field_meta, "metadata", [field_meta]):
                    rules += [
                        f"{symbol} {getattr(meta, attr)}"
                        for attr, symbol in symbols.items()
                        if getattr(meta, attr, None) is not None
                    ]
    return " and ".join(rules)


def _ctx_bound(err: Any) -> str:
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    ctx = err.get("ctx", {})
    return " and ".join(f"{sym} {ctx[key]}" for key, sym in symbols.items() if key in ctx)


def _allowed_keys(loc: tuple) -> str:
    model: type[BaseModel] = ServeConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return "see the documentation"
        model = annotation
    return ", ".join(model.model_fields)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Return the mapping in a YAML file; a syntax error names the file and line."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_server_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ServeConfig:
    """Return the config from a YAML file (optional) with dotted overrides applied on top.

    Precedence is CLI > YAML > defaults: ``overrides`` such as ``{"server.port": 9000}`` win
    over the file. Override values of ``None`` mean "not given" and are skipped.
    """
    source = str(path) if path else "config"
    data = load_yaml(path) if path else {}
    data = normalize_config_dict(data)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        set_dotted(data, dotted, value)
    return config_from_dict(data, source=source)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted="a.b"``, creating sections as needed."""
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{part}: expected a mapping, got {child!r}")
        node = child
    node[leaf] = value


# CLI option -> dotted config path (seed 003's options, plus ours).
CLI_OPTION_PATHS: dict[str, str] = {
    "model": "model.name",
    "trust_remote_code": "model.trust_remote_code",
    "gpus": "inference.tensor_parallel_size",
    "gpu_memory": "inference.gpu_memory_utilization",
    "max_model_len": "inference.max_model_len",
    "dtype": "inference.dtype",
    "quantization": "inference.quantization",
    "kv_cache_dtype": "inference.kv_cache_dtype",
    "cpu_kv_cache_gib": "inference.cpu_kv_cache_gib",
    "max_num_seqs": "inference.max_num_seqs",
    "host": "server.host",
    "port": "server.port",
    "name": "server.name",
    "temperature": "generation_defaults.temperature",
    "max_tokens": "generation_defaults.max_tokens",
    "top_p": "generation_defaults.top_p",
    "top_k": "generation_defaults.top_k",
    "presence_penalty": "generation_defaults.presence_penalty",
    "frequency_penalty": "generation_defaults.frequency_penalty",
    "backend": "backend",
    "startup_timeout": "startup_timeout",
    "log_dir": "log_dir",
}


def _keyword_paths() -> dict[str, str]:
    """Return keyword -> dotted path for every section field, plus the CLI's short names."""
    paths: dict[str, str] = {}
    for section in ("model", "inference", "server", "generation_defaults"):
        for leaf in ServeConfig.model_fields[section].annotation.model_fields:
            paths.setdefault(leaf, f"{section}.{leaf}")
    paths.update(CLI_OPTION_PATHS)  # "name" is the server's name, "model" the model's
    return paths


# Keyword arguments of VLLMServer(...) / create_server(...): a section's field by its own name.
KEYWORD_PATHS: dict[str, str] = _keyword_paths()


def parse_env_assignments(items: list[str] | None) -> dict[str, str]:
    """Return ``{"KEY": "VALUE"}`` from ``["KEY=VALUE", ...]``; a bad item is a one-line error."""
    env: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE with KEY of letters, digits, _")
        env[key] = value
    return env

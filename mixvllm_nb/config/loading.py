"""Raw dicts, YAML files and keyword arguments become a validated :class:`ServeConfig` here.

Every seed's spelling is accepted (seed 001's nested sections, seed 003's short names, seed 002's
flat form, seed 004's flat load request), CLI > YAML > defaults, and every error is one line.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .messages import format_validation_error
from .options import keyword_paths
from .schema import ServeConfig

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




# Keyword arguments of VLLMServer(...) / create_server(...): a section's field by its own name, or a flag's.
KEYWORD_PATHS: dict[str, str] = keyword_paths()


def build_config(
    backend: str | None, model: str | None, config: ServeConfig | dict | None, options: dict[str, Any]
) -> ServeConfig:
    """Return the config of ``VLLMServer(model, config=..., **options)``: a ServeConfig or a seed-style
    dict (``{"api_server_args": [...]}``), then seed-style top-level keys, then keywords by field name."""
    if isinstance(config, ServeConfig):
        data = config.model_dump(exclude_unset=True)
    else:
        data = normalize_config_dict({"config": config} if config else {})
    if backend is not None:
        data["backend"] = backend
    if model is not None:
        set_dotted(data, "model.name", model)
    flat = normalize_config_dict({k: v for k, v in options.items() if k not in KEYWORD_PATHS})
    for key, value in flat.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    for key, value in options.items():
        if key in KEYWORD_PATHS and value is not None:
            set_dotted(data, KEYWORD_PATHS[key], value)
    return config_from_dict(data)


def parse_env_assignments(items: list[str] | None) -> dict[str, str]:
    """Return ``{"KEY": "VALUE"}`` from ``["KEY=VALUE", ...]``; a bad item is a one-line error."""
    env: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE with KEY of letters, digits, _")
        env[key] = value
    return env


def parse_set_assignments(items: list[str] | None) -> dict[str, Any]:
    """Return ``{"inference.max_num_seqs": 8}`` from ``--set PATH=VALUE`` items (values read as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. inference.max_num_seqs=8")
        try:
            out[path.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[path.strip()] = raw
    return out

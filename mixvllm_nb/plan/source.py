"""Find a model's config.json: a dict, a file, a folder, or a hub id already in the local cache."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelSource:
    """A loaded config and where it came from (the folder, when safetensors may sit beside it)."""

    config: dict[str, Any]
    label: str
    folder: Path | None = None


def hf_cache_dirs() -> list[Path]:
    """Return the Hugging Face hub cache folders to search, most specific first."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def find_in_hf_cache(model_id: str) -> Path | None:
    """Return the newest cached snapshot folder of a hub id that has a config.json, or None."""
    org_name = model_id.strip("/").replace("/", "--")
    for cache in hf_cache_dirs():
        snapshots = cache / f"models--{org_name}" / "snapshots"
        found = [p.parent for p in snapshots.glob("*/config.json")]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model config {path} could not be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model config {path} must hold a JSON object, not {type(data).__name__}")
    return data


def load_model_source(model: str | os.PathLike[str] | Mapping[str, Any]) -> ModelSource:
    """Return the config of ``model``: a dict, a config.json path, a folder, or a cached hub id.

    Nothing is downloaded: a hub id must already be in the local Hugging Face cache.
    """
    if isinstance(model, Mapping):
        return ModelSource(dict(model), str(model.get("_name_or_path") or "config dict"))
    if not isinstance(model, str | os.PathLike):
        raise ConfigError(
            f"model={model!r} is not allowed: give a folder, a config.json path, a dict or a hub id"
        )
    path = Path(model).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"model folder {path} has no config.json")
        return ModelSource(_read_json(config_file), path.resolve().name, path)
    if path.is_file():
        # ".../Qwen2.5-7B/config.json" is named by its folder, "llama-3.1-8b.json" by itself.
        name = path.resolve().parent.name if path.name == "config.json" else path.stem
        return ModelSource(_read_json(path), name, path.parent)
    text = str(model)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        snapshot = find_in_hf_cache(text)
        if snapshot is not None:
            return ModelSource(_read_json(snapshot / "config.json"), text, snapshot)
        raise ConfigError(
            f"model={text!r} is not a local folder and not in the Hugging Face cache "
            f"({', '.join(str(d) for d in hf_cache_dirs())}); nothing is downloaded"
        )
    raise ConfigError(
        f"model={text!r} does not exist: give a folder, a config.json, a dict or a hub id"
    )


def text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return the language-model part of a config (multimodal configs nest it in text_config)."""
    nested = config.get("text_config")
    if isinstance(nested, Mapping):
        # Top-level keys (tie_word_embeddings, torch_dtype, quantization_config) still apply.
        merged = {k: v for k, v in config.items() if k not in ("text_config", "vision_config")}
        merged.update(nested)
        return merged
    return dict(config)

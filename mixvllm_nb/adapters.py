"""LoRA adapters on a running vLLM server: load one from a peft folder, unload it, list them.

The server must run with ``lora: {enabled: true}`` (``--enable-lora``): it then gets
``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` and answers ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``
behind its API key. A loaded adapter is a model of its own: chat with ``model=<adapter name>``.
Everything a user can get wrong (the folder, the rank, a server without LoRA, a name in use) is checked
before vLLM is asked, so a refused load leaves the server's adapters as they were; what vLLM itself
refuses comes back as one line with vLLM's own message.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .config.schema import NAME_PATTERN
from .errors import ConfigError, MixVLLMError

# Loading reads and moves the adapter's weights: seconds on a CPU, more for a big adapter.
LOAD_TIMEOUT = 300.0


class AdapterNotFoundError(MixVLLMError):
    """The server has no adapter of this name."""


def _server(server: Any) -> Any:
    """Return a server handle for a handle or a registered name."""
    if isinstance(server, str):
        from .api import get_server

        return get_server(server)
    return server


def _attached(server: Any) -> bool:
    return bool(server.record is not None and server.record.attached)


def _check_lora_server(server: Any) -> None:
    if server.backend_name != "vllm":
        raise ConfigError(f"LoRA adapters are not on this engine ({server.backend_name}): {server.name} cannot load "
                          "them; start a vllm server with --enable-lora")
    if not server.config.lora.enabled and not _attached(server):  # an attached server's flags are unknown here
        raise ConfigError(f"{server.name} was started without LoRA; restart it with --enable-lora "
                          "(lora: {enabled: true}) to load adapters")


def _request(server: Any, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 10.0) -> tuple[int, Any]:
    """Return ``(status, decoded JSON or text)`` of a request to the server (status 0: unreachable)."""
    import httpx

    try:
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            answer = client.request(method, f"{server.base_url}{path}", json=body,
                                    headers={"Authorization": f"Bearer {server.api_key}"} if server.api_key else {})
    except httpx.HTTPError as exc:
        return 0, str(exc)
    try:
        return answer.status_code, answer.json()
    except ValueError:
        return answer.status_code, answer.text


def _engine_message(data: Any) -> str:
    """Return vLLM's own error message from an answer body, on one line."""
    if isinstance(data, dict):
        error = data.get("error", data)
        data = error.get("message", error) if isinstance(error, dict) else error
    return " ".join(str(data).split())[:300]


def list_adapters(server: Any) -> list[dict[str, str]]:
    """Return the server's loaded adapters as ``[{"name", "path", "base"}]`` (from its ``/v1/models``)."""
    server = _server(server)
    status, data = _request(server, "GET", "/v1/models")
    if status != 200 or not isinstance(data, dict):
        raise MixVLLMError(f"{server.name} did not list its models (answered {status or 'nothing'}); is it running?")
    # vLLM lists an adapter as a model whose parent is the base model.
    return [{"name": m["id"], "path": str(m.get("root") or ""), "base": str(m["parent"])}
            for m in data.get("data", []) if isinstance(m, dict) and m.get("parent")]


def adapter_rank(path: Path) -> int:
    """Return the largest rank in a peft adapter folder's ``adapter_config.json`` (``r`` and ``rank_pattern``)."""
    config_file = path / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"adapter {str(path)!r}: cannot read adapter_config.json ({exc.__class__.__name__}); "
                          "give a folder saved by peft's save_pretrained") from None
    ranks = [config.get("r")] + list((config.get("rank_pattern") or {}).values())
    ranks = [r for r in ranks if isinstance(r, int)]
    if not ranks:
        raise ConfigError(f"adapter {str(path)!r}: adapter_config.json has no rank 'r'; is it a LoRA adapter?")
    return max(ranks)


def check_adapter_folder(path: str | Path, max_rank: int) -> Path:
    """Return the adapter folder, absolute; a one-line ConfigError when it is missing, not an adapter, or too big."""
    folder = Path(path).expanduser().resolve()
    if not folder.exists():
        raise ConfigError(f"adapter path {str(path)!r} does not exist; give the folder peft's save_pretrained wrote")
    if not (folder / "adapter_config.json").is_file():
        raise ConfigError(f"adapter path {str(path)!r} has no adapter_config.json; give the folder peft's "
                          "save_pretrained wrote")
    rank = adapter_rank(folder)
    if rank > max_rank:
        raise ConfigError(f"adapter {str(path)!r} has rank {rank}, over the server's max_lora_rank {max_rank}; "
                          "restart the server with a larger --max-lora-rank, or train a smaller adapter")
    return folder


def load_adapter(server: Any, name: str, path: str | Path) -> str:
    """Load a peft LoRA adapter into a running vLLM server under ``name``; return a one-line confirmation."""
    server = _server(server)
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        raise ConfigError(f"adapter name {name!r}: letters, digits, '_', '.', '-' (up to 64), starting with a "
                          "letter or digit")
    _check_lora_server(server)
    if name == server.served_model_name:
        raise ConfigError(f"adapter name {name!r} is the base model's name; choose another")
    # An attached server's folders are on its own machine: vLLM checks them there.
    folder = str(path) if _attached(server) else str(check_adapter_folder(path, server.config.lora.max_lora_rank))
    loaded = list_adapters(server)
    if any(a["name"] == name for a in loaded):
        raise ConfigError(f"adapter {name!r} is already loaded on {server.name}; unload it first, or choose "
                          "another name")
    status, data = _request(server, "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": folder},
                            timeout=LOAD_TIMEOUT)
    if status == 404:
        raise MixVLLMError(f"{server.name} does not load adapters at run time (no /v1/load_lora_adapter); "
                           "restart it with --enable-lora")
    if status != 200:
        raise MixVLLMError(f"{server.name} refused adapter {name!r} ({status or 'no answer'}): "
                           f"{_engine_message(data)}")
    return f"loaded adapter {name} on {server.name} from {folder}; chat with model={name!r}"


def unload_adapter(server: Any, name: str) -> str:
    """Unload an adapter from a running vLLM server; return a one-line confirmation."""
    server = _server(server)
    _check_lora_server(server)
    names = [a["name"] for a in list_adapters(server)]
    if name not in names:
        shown = ", ".join(names) or "none"
        raise AdapterNotFoundError(f"adapter {name!r} is not loaded on {server.name}; loaded: {shown}")
    status, data = _request(server, "POST", "/v1/unload_lora_adapter", {"lora_name": name}, timeout=60.0)
    if status != 200:
        raise MixVLLMError(f"{server.name} did not unload adapter {name!r} ({status or 'no answer'}): "
                           f"{_engine_message(data)}")
    return f"unloaded adapter {name} from {server.name}"

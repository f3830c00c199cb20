"""Sleep and wake a vLLM server: free its GPU memory between uses without unloading it from the registry.

vLLM answers ``POST /sleep?level=N``, ``POST /wake_up`` and ``GET /is_sleeping`` only with
``--enable-sleep-mode``, ``VLLM_SERVER_DEV_MODE=1`` and CUDA (level 1 moves the weights to CPU memory
and drops the KV cache; level 2 drops the weights too). Those routes sit behind the server's API key
and are never forwarded by the Jupyter proxy (its allowlist): they are called here, with the key.
What cannot sleep says so in one line, before vLLM is asked: another engine, a CPU machine (vLLM's
CPU build has no ``/sleep``: it answers 404), a server started without sleep mode. An attached server
runs elsewhere: its GPU and its flags are unknown here, so it is asked, and its 404 explained.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ConfigError, MixVLLMError
from .process import registry
from .process.http import http_get, http_post

LEVELS = (1, 2)
# Level 2 frees the weights; sleeping moves them to the CPU first (level 1): seconds for a large model.
SLEEP_TIMEOUT = 120.0


class SleepUnavailableError(MixVLLMError):
    """This server cannot sleep: the message names what is missing (engine, CUDA GPU, sleep mode)."""


def _attached(server: Any) -> bool:
    return bool(server.record is not None and server.record.attached)  # a handle from a record (api.get_server)


def check_sleep_mode(server: Any) -> None:
    """Raise SleepUnavailableError (one line) when this server cannot sleep; nothing is sent to it."""
    from .gpu import has_gpu

    label = f"{server.name} ({server.served_model_name})"
    if server.backend_name != "vllm":
        raise SleepUnavailableError(f"{label}: sleep mode is vLLM's; the {server.backend_name} engine has no "
                                    "/sleep (stop the server to free its memory)")
    if _attached(server):
        return  # it runs elsewhere: its own answer tells
    if not has_gpu():
        raise SleepUnavailableError(f"{label}: sleep mode needs a CUDA GPU; vLLM's CPU build has no /sleep "
                                    "(it answers 404)")
    if not server.config.inference.enable_sleep_mode:
        raise SleepUnavailableError(f"{label}: started without sleep mode; restart it with "
                                    "inference.enable_sleep_mode: true (--enable-sleep-mode)")


def _call(server: Any, method: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    send = http_post if method == "POST" else http_get
    status, body = send(f"{server.base_url}{path}", api_key=server.api_key, timeout=timeout)
    if status == 404:
        raise SleepUnavailableError(f"{server.name} ({server.served_model_name}) answers 404 on {path.split('?')[0]}: "
                                    "sleep mode needs vLLM on CUDA with --enable-sleep-mode and "
                                    "VLLM_SERVER_DEV_MODE=1")
    if status != 200:
        detail = " ".join(body.decode(errors="replace").split())[:200]
        raise MixVLLMError(f"{server.name}: {method} {path} answered {status or 'nothing'}"
                           f"{': ' + detail if detail else ''}")
    return status, body


def is_sleeping(server: Any) -> bool:
    """Return whether the server is asleep (vLLM's ``GET /is_sleeping``)."""
    check_sleep_mode(server)
    _, body = _call(server, "GET", "/is_sleeping")
    try:
        return bool(json.loads(body).get("is_sleeping"))
    except (ValueError, AttributeError):
        raise MixVLLMError(f"{server.name}: /is_sleeping answered {body[:100]!r}, not an is_sleeping object") from None


def sleep_server(server: Any, level: int = 1) -> str:
    """Put a vLLM server to sleep (level 1: weights to CPU memory; 2: weights dropped); return one line."""
    if level not in LEVELS:
        raise ConfigError(f"sleep level {level!r}: use 1 (weights kept in CPU memory) or 2 (weights dropped)")
    check_sleep_mode(server)
    _call(server, "POST", f"/sleep?level={level}", timeout=SLEEP_TIMEOUT)
    if not is_sleeping(server):
        raise MixVLLMError(f"{server.name}: /sleep answered 200 but /is_sleeping says it is awake")
    registry.update(server.name, sleeping=True)  # every process sees it: the proxy wakes it for a request
    return f"{server.name} is asleep (level {level}); %vllm_wake {server.name} before using it"


def wake_server(server: Any) -> str:
    """Wake a sleeping vLLM server; return one line."""
    check_sleep_mode(server)
    _call(server, "POST", "/wake_up", timeout=SLEEP_TIMEOUT)
    if is_sleeping(server):
        raise MixVLLMError(f"{server.name}: /wake_up answered 200 but /is_sleeping says it still sleeps")
    registry.update(server.name, sleeping=False)
    return f"{server.name} is awake"


class IdleWatch:
    """Tell when a server has had no request for ``minutes``, from what its ``/metrics`` says at each look.

    Activity is any change of its prompt-token counter, or a request running or waiting; a look that
    cannot read the metrics counts as activity (never put a server to sleep on a guess).
    """

    def __init__(self, minutes: float, now: float) -> None:
        self.limit_s = minutes * 60
        self.last_active = now
        self._seen: float | None = None

    def idle_for(self, now: float, prompt_tokens_total: float | None, in_flight: int | None) -> float:
        """Record one look at the server; return the seconds it has been idle."""
        if prompt_tokens_total is None or in_flight is None or in_flight > 0 or prompt_tokens_total != self._seen:
            self.last_active = now
            self._seen = prompt_tokens_total
        return now - self.last_active

    def due(self, now: float, prompt_tokens_total: float | None, in_flight: int | None) -> bool:
        """Return True when the server has been idle for the configured minutes."""
        return self.idle_for(now, prompt_tokens_total, in_flight) >= self.limit_s


def sleep_status(server: Any) -> dict[str, Any]:
    """Return ``{"name", "sleeping"}`` for a server that can sleep (SleepUnavailableError otherwise)."""
    return {"name": server.name, "sleeping": is_sleeping(server)}

"""The servers API's domain side, free of tornado: JSON-ready server models, start and stop.

Handlers only translate HTTP to these calls, so the REST API, the magics and the panel share one
process manager and one registry: a server started by a kernel shows up here and the other way round.
"""

from __future__ import annotations

from typing import Any

from ..api import serve, stop_server
from ..config import config_from_dict
from ..process import registry
from ..process.server import InferenceServer

ServerModel = dict[str, Any]

_LIVE_STATES = ("starting", "ready", "unhealthy")


def proxy_path(base_url: str, name: str) -> str:
    """Return the proxy's root path for a server (a client appends ``/v1/...``, ``/health``, ``/metrics``)."""
    return f"{base_url.rstrip('/')}/mixvllm/servers/{name}"


def server_model(record: registry.ServerRecord, base_url: str) -> ServerModel:
    """Return what the API shows of a server: the record without secrets, its state and URLs."""
    data = record.public()
    if data["dead"] and data["state"] in _LIVE_STATES:
        # The record keeps the last state its owner wrote; a vanished process is not "ready".
        data["state"] = "exited"
    data["started_by"] = (record.owner or {}).get("kind", "")
    root = proxy_path(base_url, record.name)
    data["urls"] = {
        "upstream": record.base_url,
        "proxy": f"{root}/v1",
        "health": f"{root}/health",
        "metrics": f"{root}/metrics",
    }
    return data


def list_models(base_url: str) -> list[ServerModel]:
    """Return every registered server, oldest first."""
    return [server_model(record, base_url) for record in registry.list_records()]


def get_model(name: str, base_url: str) -> ServerModel:
    """Return one server; raise ServerNotFoundError when no server has this name."""
    return server_model(registry.get(name), base_url)


def start(
    body: dict[str, Any], *, reuse: bool = True, replace: bool = False, detach: bool = False
) -> tuple[InferenceServer, str]:
    """Validate a config (the YAML schema, as JSON) and launch it without waiting.

    Returns the server and ``"Launched"`` or ``"Reused"``. Raises ConfigError with the field
    paths when the body is invalid or the name is taken by a different config. Blocking (the
    default model may be converted first): call it from a thread.
    """
    config = config_from_dict(body, source="request body")
    result = serve(config, reuse=reuse, replace=replace, wait=False, detach=detach, owner_kind="jupyter-server")
    return result.server, result.outcome


def stop(name: str) -> str:
    """Stop a launched server (or forget an attached one); return the one-line summary. Blocking."""
    return stop_server(name)

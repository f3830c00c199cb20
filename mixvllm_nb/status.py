"""Server status for people: state, uptime, the KV cache vLLM reported, and live load from /metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .display import Table, format_uptime, state_badge
from .process import logs, registry
from .process.http import http_get
from .process.view import server_view

if TYPE_CHECKING:
    from .backends.base import InferenceServer

COLUMNS = ["name", "model", "state", "url", "pid", "uptime", "KV cache tokens", "planned", "max concurrency",
           "running", "waiting", "KV usage %", "gen tokens/s"]


def scrape(server: InferenceServer) -> Any | None:
    """Return the server's parsed ``/metrics`` (None when it has none, e.g. another engine)."""
    from .metrics import VllmMetrics

    status, body = http_get(f"{server.base_url}/metrics", api_key=server.api_key, timeout=3)
    if status != 200:
        return None
    return VllmMetrics.from_text(body.decode("utf-8", errors="replace"))


def live_load(server: InferenceServer, previous: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Return running/waiting requests, KV usage and generation tokens/s for a live server.

    Tokens/s comes from the counter's change since the previous call for this server (kept in
    ``previous``); on a first call two scrapes half a second apart are used.
    """
    if not getattr(server, "has_metrics", True):  # e.g. llama.cpp: no /metrics to ask for
        return {}
    metrics = scrape(server)
    if metrics is None:
        return {}
    now = time.monotonic()
    if server.name not in previous:
        previous[server.name] = (now, metrics.generation_tokens_total)
        time.sleep(0.5)
        metrics, now = scrape(server) or metrics, time.monotonic()
    then, tokens_then = previous[server.name]
    previous[server.name] = (now, metrics.generation_tokens_total)
    delta = metrics.generation_tokens_total - tokens_then
    rate = delta / (now - then) if now > then and delta >= 0 else None
    return {
        "running": metrics.num_requests_running,
        "waiting": metrics.num_requests_waiting,
        "kv_usage": None if metrics.kv_cache_usage is None else round(metrics.kv_cache_usage * 100, 1),
        "tokens_per_s": None if rate is None else round(rate, 1),
    }


def planned_kv_tokens(record: registry.ServerRecord) -> int | None:
    """Return the KV cache tokens the planner predicts for a launched server (None if unknown)."""
    if record.attached or record.backend != "vllm":  # the planner computes what vLLM allocates
        return None
    from .config import ServeConfig
    from .plan import plan_for_config

    try:
        return plan_for_config(ServeConfig.model_validate(record.config)).kv_cache_tokens
    except (ValueError, OSError):  # a hub model that is not in the local cache: no config to read
        return None


def server_row(record: registry.ServerRecord, previous: dict[str, tuple[float, float]]) -> list[Any]:
    """Return one status row for a registered server (its state from the one view every front shows)."""
    from .api import server_from_record

    server = server_from_record(record)
    view = server_view(record, server)
    state = view["state"]
    load = live_load(server, previous) if state in ("ready", "unhealthy") else {}
    # An engine without /metrics (llama.cpp) says so, rather than leaving blanks to puzzle over.
    no_metrics = None if server.has_metrics else f"n/a on {server.engine_label}"
    kv = logs.kv_cache_report(logs.read_text(record.log_path)) if record.log_path else None
    return [
        record.name, record.served_model_name, state_badge(state), record.base_url, record.pid,
        format_uptime(view["uptime_s"]),
        f"{kv.tokens:,}" if kv else None,
        f"{planned:,}" if (planned := planned_kv_tokens(record)) else None,
        f"{kv.max_concurrency:.2f}x" if kv and kv.max_concurrency else None,
        load.get("running", no_metrics), load.get("waiting", no_metrics), load.get("kv_usage", no_metrics),
        load.get("tokens_per_s", no_metrics),
    ]


def status_table(name: str | None = None, previous: dict[str, tuple[float, float]] | None = None) -> Table:
    """Return the status of one server (by name) or of all registered servers."""
    previous = {} if previous is None else previous
    records = [registry.get(name)] if name else registry.list_records()
    rows = [server_row(record, previous) for record in records]
    return Table(COLUMNS, rows, title="mixvllm_nb status", html_cells={"state"})


LIST_COLUMNS = ["name", "model", "state", "url", "pid", "started by", "uptime"]


def list_rows(views: list[dict[str, Any]]) -> list[list[Any]]:
    """Return ``%vllm_list`` / ``mixvllm-serve list`` rows from server views (state as a plain word)."""
    rows = []
    for view in views:
        started_by = view["started_by"] + (" (detached)" if view.get("detached") else "")
        rows.append([view["name"], view["served_model_name"], view["state"], view["base_url"], view["pid"],
                     started_by, format_uptime(view["uptime_s"])])
    return rows


def list_table(views: list[dict[str, Any]]) -> Table:
    """Return every registered server as a table (HTML in a notebook, aligned text elsewhere)."""
    rows = [[*row[:2], state_badge(row[2]), *row[3:]] for row in list_rows(views)]
    return Table(LIST_COLUMNS, rows, title="mixvllm_nb servers", html_cells={"state"})

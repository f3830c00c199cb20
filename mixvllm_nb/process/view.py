"""One view of a server: the state it is really in, and how it looks as JSON, for every front.

The REST API, ``list_servers()``, ``%vllm_list``, ``%vllm_status``, the panel and ``mixvllm-serve list``
all show :func:`server_view`; none of them reads a record's ``state`` on its own. A record keeps the
last state its owner wrote, so a server whose process has vanished reads ``exited`` (or ``crashed``
when it ended with an error) here, whatever the record says.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict
from typing import Any

from . import logs, registry
from .heartbeat import end_cause
from .states import State

ServerView = dict[str, Any]
_SECRET_NAME = re.compile(r"key|token|secret|password|passwd|credential", re.IGNORECASE)
HIDDEN = "<hidden>"


def _runs_here(live: Any) -> bool:
    """True for this process's own server object (its process or Ray job started here): its heartbeat knows first."""
    return live is not None and (getattr(live, "process", None) is not None or getattr(live, "job", None) is not None)


def effective_state(record: registry.ServerRecord, live: Any = None) -> State:
    """Return the state a registered server is in now.

    ``live`` is this process's own server object, whose heartbeat knows first; otherwise the
    record's state, corrected when its process is gone.
    """
    if _runs_here(live):
        return State(live.state)
    try:
        state = State(record.state)
    except ValueError:  # "claimed", or a state from another version: a launch in progress
        state = State.STARTING
    if record.attached:
        return state
    if state.live and not record.process_alive():
        code = record.exit_code
        if code is None and record.cluster:  # Ray knows how the job ended
            from .ray_jobs import RayJob

            code = RayJob.from_record(record.cluster).poll()
        return State.CRASHED if code not in (None, 0) else State.EXITED
    return state


def current_state(name: str, live: Any = None) -> State:
    """Return the state of the server called ``name``; ``stopped`` once its record is gone."""
    if _runs_here(live):
        return State(live.state)
    record = registry.get(name, missing_ok=True) if name else None
    return State.STOPPED if record is None else effective_state(record)


def server_view(record: registry.ServerRecord, live: Any = None, *, details: bool = False) -> ServerView:
    """Return what every front shows of a server, as JSON-ready data, secrets left out.

    No API key and no marker; the values of ``env_vars`` and of secret-looking ``extra_args`` are
    hidden (an ``HF_TOKEN`` is nobody's business but its owner's). ``details`` adds the KV cache
    the engine logged (it reads the log).
    """
    data = asdict(record)
    data.pop("api_key")
    data.pop("marker")
    data["config"] = redact_config(data.get("config") or {})
    state = effective_state(record, live)
    data["state"] = str(state)
    data["dead"] = not record.attached and state.ended
    owner = record.owner or {}
    data["started_by"] = "attached" if record.attached else owner.get("kind", "")
    data["uptime_s"] = None if state.ended else round(time.time() - record.started_at, 1)
    data["error"] = getattr(live, "error", "") or ""
    if not data["error"] and state in (State.CRASHED, State.EXITED) and not record.attached:
        data["error"] = end_cause(record.exit_code, record.log_path or "")  # what any process can tell
    if details:
        kv = logs.kv_cache_report(logs.read_text(record.log_path)) if record.log_path else None
        data["kv_cache"] = str(kv) if kv else None
    return data


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a public config with environment values and secret-looking flag values hidden."""
    out = dict(config)
    if isinstance(out.get("env_vars"), dict):
        out["env_vars"] = {key: HIDDEN for key in out["env_vars"]}
    extra = out.get("extra_args")
    if isinstance(extra, dict):
        out["extra_args"] = {k: (HIDDEN if _SECRET_NAME.search(str(k)) else v) for k, v in extra.items()}
    elif isinstance(extra, list):
        shown: list[Any] = []
        for item in extra:
            flag, sep, _ = str(item).partition("=")
            if sep and _SECRET_NAME.search(flag):
                shown.append(f"{flag}={HIDDEN}")
            elif shown and isinstance(shown[-1], str) and shown[-1].startswith("-") and _SECRET_NAME.search(shown[-1]):
                shown.append(HIDDEN)
            else:
                shown.append(item)
        out["extra_args"] = shown
    return out


def list_views(*, details: bool = False) -> list[ServerView]:
    """Return the view of every registered server, oldest first (this process's own ones as it knows them)."""
    from .ownership import live_servers

    mine = {server.name: server for server in live_servers()}
    return [server_view(record, mine.get(record.name), details=details) for record in registry.list_records()]

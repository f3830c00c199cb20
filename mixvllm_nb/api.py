"""The front door every front uses: create, start (or reuse), find, view and stop servers.

The magics, the panel, ``mixvllm-serve`` and the Jupyter extension's REST API all start servers
through :func:`serve` (reuse of an identical server, ``replace``, the engine ``auto`` chooses and
why, decided once) and show them through :func:`mixvllm_nb.process.view.server_view`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import backend_class
from .backends.base import InferenceServer
from .config import ServeConfig, load_server_config
from .errors import ConfigError, NameTakenError, OwnedElsewhereError
from .process import registry
from .process.ownership import live_servers, orphaned, owner_elsewhere
from .process.ports import is_loopback
from .process.stopping import stop_record
from .process.view import ServerView, list_views


def create_server(backend: str = "vllm", model: str | None = None, **kwargs: Any) -> InferenceServer:
    """Return an unstarted server of the given backend (seed 002's factory)."""
    return backend_class(backend)(model, **kwargs)


def server_for_config(config: ServeConfig, **kwargs: Any) -> InferenceServer:
    """Return an unstarted server for a validated config (``backend: auto`` resolved for this machine)."""
    return backend_class(config.backend)(config=config, **kwargs)


def start_server_from_config(
    path: str | Path, overrides: dict[str, Any] | None = None, **kwargs: Any
) -> InferenceServer:
    """Start a server from a YAML file (with optional dotted overrides) and wait until ready."""
    return server_for_config(load_server_config(path, overrides), **kwargs).start()


@dataclass
class ServeResult:
    """A server and how we got it: ``Launched`` or ``Reused`` (as TensorBoard's magic reports)."""

    server: InferenceServer
    outcome: str
    # Why ``backend: auto`` chose this engine (empty when the config named one).
    engine_reason: str = ""
    # A running server with the same engine whose sampling defaults alone differ: why a second copy loads.
    twin: str = ""

    @property
    def engine(self) -> str:
        """The engine in words, and why when ``auto`` chose a light one: ``llama.cpp (vLLM is not installed)``."""
        label = self.server.engine_label
        return f"{label} ({self.engine_reason})" if self.engine_reason and label != "vLLM" else label

    def describe(self) -> str:
        """Return what every front prints: what was launched or reused, where, on which engine, and whose it is."""
        server = self.server
        if self.outcome == "Reused":
            line = (f"Reused {server.name} ({server.state}, {self.engine}) at {server.base_url}/v1 — same config, "
                    "no second model load.")
            owner = (server.record.owner if server.record else None) or {}
            if owner.get("pid") not in (None, os.getpid()) and not (server.record and server.record.detached):
                line += (f" It belongs to a {owner.get('kind', 'process')} (pid {owner['pid']}) and stops with it;"
                         " launch with another --name to have your own.")
            return line
        cluster = server.record.cluster if server.record else {}
        where = (f"as Ray job {cluster['job_id']} on {cluster['address']} (node {cluster.get('node', '?')})"
                 if cluster else f"(pid {server.pid})")
        line = f"Launched {server.name} on {self.engine} {where}; log: {server.log_path}"
        if note := server.config.terminal.unused_note():
            line += f"\n{note}"
        if self.twin:
            line += f"\n{self.twin}"
        if not is_loopback(server.host) and not cluster:
            line += (f"\nListening on {server.host}: every machine that reaches this one can use the model with its "
                     "API key (and its /health without one). Loopback (127.0.0.1) and Jupyter's proxy keep it private.")
        return line


def serve(
    config: ServeConfig,
    *,
    reuse: bool = True,
    replace: bool = False,
    wait: bool = True,
    detach: bool = False,
    owner_kind: str = "python",
) -> ServeResult:
    """Start a server for ``config``, or reuse a running one with the same effective config.

    A server under the requested name with a different config is an error unless ``replace``,
    which stops it first.
    """
    reason = ""
    if config.backend == "auto" and config.cluster.address:  # this machine's size says nothing of the cluster's
        config = config.model_copy(update={"backend": "vllm"})
        reason = "on a Ray cluster"
    elif config.backend == "auto":  # decided once here, so that the reason told is the one acted on
        from .backends.auto import choose_engine

        engine, reason = choose_engine()
        config = config.model_copy(update={"backend": engine})
    server = server_for_config(config, detach=detach, owner_kind=owner_kind)
    server.prepare()  # resolve the default model etc., so identities compare what would run
    identity = server.config.identity()
    with registry.launch_lock(identity):  # one config identity, one engine, however many ask at once
        reused = _reusable(config.server.name, identity, reuse=reuse, replace=replace, detach=detach)
        if reused is not None:
            return ServeResult(server_from_record(reused), "Reused", reason)
        server.launch()
    twin = _sampling_twin(server.config, identity)
    if wait:
        server.wait_until_ready()
    return ServeResult(server, "Launched", reason, twin)


def _sampling_twin(config: ServeConfig, identity: str) -> str:
    """Say so when a running server has this engine config and only other sampling defaults (two model loads)."""
    engine = config.identity(sampling=False)
    ours = config.generation_defaults.model_dump(mode="json")
    for record in registry.list_records():
        if record.attached or record.identity == identity or record.is_dead() or record.state not in ("starting",
                                                                                                       "ready"):
            continue
        try:
            other = ServeConfig.model_validate(record.config)
        except ValueError:
            continue
        if other.identity(sampling=False) != engine:
            continue
        theirs = other.generation_defaults.model_dump(mode="json")
        def shown(value: Any) -> str:
            return "unset" if value is None else str(value)

        differ = ", ".join(f"{key} {shown(theirs[key])} there, {shown(ours[key])} here"
                           for key in ours if ours[key] != theirs[key])
        return (f"This is a second copy of {config.model.name}: {record.name} runs the same engine with other "
                f"sampling defaults ({differ}), and each copy holds its own memory. To use one copy, send the "
                f"sampling per request (%vllm_chat --temperature ...) to {record.name}, or %vllm_stop {record.name}.")
    return ""


def _reusable(name: str | None, identity: str, *, reuse: bool, replace: bool,
              detach: bool) -> registry.ServerRecord | None:
    """Return the running server to reuse for a config, or None to launch (stopping a replaced one first).

    Never reused: a server whose owner has died (its watchdog is stopping it), and, for a caller who asked
    for a detached server, one that stops with its owner.
    """
    existing = registry.get(name, missing_ok=True) if name else None
    if existing is not None and (existing.is_dead() or orphaned(existing)):
        stop_record(existing)  # an orphan would vanish under its new user in a moment: stop it now
        existing = None
    if existing is not None:
        same = existing.identity == identity and not existing.attached and (existing.detached or not detach)
        if same and reuse and not replace:
            return existing
        if not replace:
            why = " (it stops with its owner; you asked for a detached one)" if detach and not existing.detached else ""
            raise NameTakenError(f"server.name: {name!r} is already running with a different config{why}; "
                                 "use another name, stop it, or pass replace")
        server_from_record(existing).stop()
        return None
    if reuse:
        for record in registry.list_records():
            if (record.identity == identity and not record.attached and record.state in ("starting", "ready")
                    and (record.detached or not detach) and not record.is_dead() and not orphaned(record)):
                return record
    return None


def server_from_record(record: registry.ServerRecord) -> InferenceServer:
    """Return a handle on a registered server (this process's own object when it has one).

    A backend registered only in another process (a kernel's custom class) still gets a handle
    that can be viewed and stopped: stopping needs the record, not the backend.
    """
    for server in live_servers():
        if server.name == record.name:
            return server  # type: ignore[return-value]
    try:
        cls = backend_class(record.backend)
    except ConfigError:
        cls = InferenceServer
    return cls.from_record(record)


def attach(url: str, *, api_key: str | None = None, name: str | None = None, timeout: float = 10.0) -> InferenceServer:
    """Register an existing OpenAI-compatible endpoint (e.g. a vLLM server on a GPU cluster).

    The endpoint must answer ``/v1/models``; its first model becomes the served model. It is
    never stopped by mixvllm_nb, only detached.
    """
    from urllib.parse import urlsplit

    from .process.http import http_get_json

    base = url.rstrip("/").removesuffix("/v1")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"attach: {url!r} is not an http(s) URL such as http://gpu-node:8000")
    models = http_get_json(f"{base}/v1/models", api_key=api_key or "", timeout=timeout)
    ids = [m.get("id") for m in (models or {}).get("data", []) if isinstance(m, dict)]
    if not ids:
        raise ConfigError(f"attach: {base}/v1/models did not answer with a model list (wrong URL or API key?)")
    name = registry.validate_name(name) if name else registry.unique_name(ids[0].split("/")[-1])
    if registry.get(name, missing_ok=True) is not None:
        raise NameTakenError(f"attach: a server named {name!r} is already registered; pass another name")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    record = registry.ServerRecord(
        name=name, backend="vllm", model=ids[0], served_model_name=ids[0], host=parts.hostname,
        port=port, base_url=base, api_key=api_key or "", kind="attached", state="ready",
        config={"model": {"name": ids[0]}, "server": {"name": name}},
    )
    registry.save(record)
    return server_from_record(record)


def get_server(name: str | None = None) -> InferenceServer:
    """Return the server called ``name``, or the newest live one when no name is given."""
    if name:
        return server_from_record(registry.get(name))
    records = [r for r in registry.list_records() if not r.is_dead()]
    if not records:
        raise ConfigError("no server is running; start one first (no name given)")
    return server_from_record(records[-1])


def list_servers(*, details: bool = False) -> list[ServerView]:
    """Return every registered server as JSON-ready data (no secrets): the one view every front shows."""
    return list_views(details=details)


def stop_server(name: str, *, force: bool = False) -> str:
    """Stop a launched server (or forget an attached one); return a one-line confirmation.

    A server that another live kernel or process owns (one that reused it here does not own it) is
    stopped only with ``force``: stopping it pulls the model from under that notebook.
    """
    record = registry.get(name)
    if record.attached:
        registry.remove(name)
        return f"detached {name} (an attached server is never stopped by mixvllm_nb)"
    mine = next((server for server in live_servers() if server.name == name), None)
    owner = None if mine is not None else owner_elsewhere(record)
    if owner is not None and not force:
        raise OwnedElsewhereError(f"{name} belongs to {owner}, which is alive; left running. It stops "
                                  "with its owner; to stop it now anyway, use --force (force=True)")
    # Our own object also stops its heartbeat and watchdog; any other server is stopped from its record
    # alone (its marker, pid and start stamp), whichever process or backend class started it.
    report = mine.stop() if mine is not None else stop_record(record)
    return f"{name}: {report.summary()}"


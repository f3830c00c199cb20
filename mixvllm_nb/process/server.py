"""One inference server process: launch, readiness, heartbeat, and a stop that leaves nothing behind.

:class:`InferenceServer` holds the lifecycle; backends (``mixvllm_nb.backends``) subclass it and
say how to launch and probe their server. Every front (magics, panel, Jupyter extension, CLI)
goes through this class, so "where is a server started" has one answer: :meth:`launch`.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import psutil

from ..config import ServeConfig, config_from_dict
from ..errors import ConfigError, MixVLLMError, NameTakenError, ServerStartError, ServerTimeoutError
from . import logs, registry
from .http import http_get
from .ports import ensure_port_free, free_port, url_host, wait_port_free
from .tree import MARKER_ENV, StopReport, process_matches, stop_processes

log = logging.getLogger("mixvllm_nb")

STATES = ("new", "starting", "ready", "unhealthy", "exited", "crashed", "stopped")
_JUPYTER_SECRETS = ("JUPYTER_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_API_TOKEN")
_LIVE_SERVERS: weakref.WeakSet[InferenceServer] = weakref.WeakSet()


class InferenceServer:
    """A model server run as a background process, tracked until it is stopped.

    Build one from a :class:`ServeConfig` or from seed-style keywords
    (``VLLMServer(model=..., port=..., output_dir=..., config={"api_server_args": [...]})``),
    then :meth:`start` it, or use it as a context manager.
    """

    backend_name: ClassVar[str] = "base"
    # How people call the engine in messages ("Launched x on vLLM").
    engine_label: ClassVar[str] = "custom"
    # False for an engine without vLLM's Prometheus /metrics: status says "n/a", nobody scrapes it.
    has_metrics: ClassVar[bool] = True

    def __init__(
        self,
        model: str | None = None,
        *,
        config: ServeConfig | dict[str, Any] | None = None,
        detach: bool = False,
        owner_kind: str = "python",
        **options: Any,
    ) -> None:
        self.config = _build_config(self.backend_name, model, config, options)
        self.detach = detach
        self.owner_kind = owner_kind
        self.state = "new"
        self.exit_code: int | None = None
        self.error: str = ""
        self.name = ""
        self.process: subprocess.Popen | None = None
        self.record: registry.ServerRecord | None = None
        self._resolved = False
        self._engine_pids: dict[int, float] = {}
        self._heartbeat: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._watchdog: subprocess.Popen | None = None
        self._listeners: list[Callable[[InferenceServer, str], None]] = []
        self._launched_at = 0.0
        self._lock = threading.RLock()

    # -- what subclasses provide ------------------------------------------------------------------

    def get_backend_name(self) -> str:
        """Return the backend's name (``vllm``, ``sglang``, ...)."""
        return self.backend_name

    def get_binary_path(self) -> str:
        """Return the program that runs the server (this Python, for Python servers)."""
        return sys.executable

    def build_command(self) -> list[str]:
        """Return the backend's own launch command (without a profiler wrapper)."""
        raise NotImplementedError

    def build_env(self) -> dict[str, str]:
        """Return the environment variables the backend needs on top of the config's."""
        return {}

    def get_health_endpoint(self) -> str:
        """Return the URL that answers 200 when the server is healthy."""
        return f"{self.base_url}/health"

    def list_endpoints(self) -> dict[str, str]:
        """Return the server's main endpoints by name (default: the OpenAI-compatible ones)."""
        return self.openai_endpoints()

    def openai_endpoints(self) -> dict[str, str]:
        """Return the OpenAI-compatible routes that every server here offers, by name."""
        return {
            "health": self.get_health_endpoint(),
            "models": f"{self.base_url}/v1/models",
            "completions": f"{self.base_url}/v1/completions",
            "chat": f"{self.base_url}/v1/chat/completions",
        }

    def serves_model(self) -> bool:
        """Return True when the server's ``/v1/models`` lists the model clients ask for."""
        from .http import http_get_json

        models = http_get_json(f"{self.base_url}/v1/models", api_key=self.api_key, timeout=5)
        return self.served_model_name in [m.get("id") for m in (models or {}).get("data", [])]

    def is_ready(self) -> bool:
        """Return True when the server answers requests (default: the health endpoint is 200)."""
        return self.check_health()

    def check_resources(self) -> None:
        """Raise ConfigError, before anything is launched, when this machine cannot run the config."""

    def default_model(self, *, convert: bool = True) -> tuple[str, str]:
        """Return what to serve when no model is named, and the name clients use for it.

        The embedded SmolLM2 as a Hugging Face folder (converted once from its GGUF when needed;
        ``convert=False`` only names the folder it would be converted into).
        """
        from ..models import DEFAULT_MODEL_ID, converted_model_dir, resolve_default_model

        try:
            resolved = resolve_default_model(prepare=convert)
        except MixVLLMError:
            if convert:
                raise  # a failed conversion must stop the launch, not start vLLM on a missing folder
            return str(converted_model_dir()), DEFAULT_MODEL_ID
        return resolved.model, resolved.served_model_name

    # -- resolved settings --------------------------------------------------------------------------

    def prepare(self, *, convert_default_model: bool = True) -> None:
        """Resolve what the config leaves open: the model, device defaults, port, key and name."""
        if self._resolved:
            return
        cfg = self.config
        if cfg.model.name is None:
            model_name, served = self.default_model(convert=convert_default_model)
            cfg.model.name = model_name
            if cfg.model.served_model_name is None:
                cfg.model.served_model_name = served
        else:
            _check_model_exists(cfg.model.name)
        if cfg.server.port is None:
            cfg.server.port = free_port(cfg.server.host)
        if cfg.server.api_key is None:
            cfg.server.api_key = secrets.token_urlsafe(24)
        if cfg.profile.enabled:  # once: a later stop or another process must find the same folder
            cfg.profile.output_dir = cfg.profile.output_dir.expanduser().resolve()
        self._resolved = True

    @property
    def model(self) -> str:
        """The model name or folder being served."""
        return self.config.model.name or ""

    @property
    def served_model_name(self) -> str:
        """The model name clients put in requests."""
        return self.config.model.served_model_name or self.model

    @property
    def host(self) -> str:
        return self.config.server.host

    @property
    def port(self) -> int:
        return self.config.server.port or 0

    @property
    def base_url(self) -> str:
        """The server's root URL for a client on this machine."""
        if self.record is not None and self.record.attached:
            return self.record.base_url
        return f"http://{url_host(self.host)}:{self.port}"

    @property
    def attached(self) -> bool:
        """True for an external endpoint registered with attach: never started or stopped by us."""
        return self.record is not None and self.record.attached

    @property
    def api_key(self) -> str:
        """The key clients must send (keep it out of logs)."""
        key = self.config.server.api_key
        return key.get_secret_value() if key is not None else ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else (self.record.pid if self.record else None)

    @property
    def log_path(self) -> str:
        return self.record.log_path if self.record and self.record.log_path else ""

    def get_launch_command(self) -> list[str]:
        """Return the full launch command, profiler wrapper included (never holds the API key)."""
        self.prepare(convert_default_model=False)
        command = self.build_command()
        profile = self.config.profile
        if profile.enabled and profile.tool == "nsys":
            output = str(Path(profile.output_dir) / f"{self.name or 'server'}-%p")
            return ["nsys", "profile", "-o", output, *profile.args, *command]
        if profile.enabled and profile.tool == "amd":
            output = str(Path(profile.output_dir) / f"{self.name or 'server'}.csv")
            return ["rocprof", "-o", output, *profile.args, *command]
        return command

    def get_launch_env(self) -> dict[str, str]:
        """Return the variables added to the server's environment (API key included)."""
        self.prepare(convert_default_model=False)
        env = dict(self.build_env())
        env.update(self.config.env_vars)
        return env

    @property
    def torch_profiling(self) -> bool:
        """True when the config turns on the PyTorch profiler (start and stop it with :meth:`profile`)."""
        return self.config.profile.enabled and self.config.profile.tool == "pytorch"

    def profile(self, action: str, timeout: float = 120.0) -> str:
        """``start`` or ``stop`` the server's PyTorch profiler; return where the traces go.

        The server must run with ``profile: {enabled: true, tool: pytorch}``: vLLM then offers
        ``POST /start_profile`` and ``/stop_profile``, and writes a trace per process when stopped.
        """
        if action not in ("start", "stop"):
            raise ConfigError(f"profile: {action!r} is not an action; allowed: start, stop")
        if not self.torch_profiling:
            raise ConfigError(f"profile: {self.name} was not started with profile: {{enabled: true, tool: pytorch}}; "
                              "restart it with that config to use the PyTorch profiler")
        from .http import http_post

        status, body = http_post(f"{self.base_url}/{action}_profile", api_key=self.api_key, timeout=timeout)
        if status != 200:
            raise MixVLLMError(f"profile {action}: {self.name} answered {status or 'nothing'}: "
                               f"{body.decode(errors='replace')[:200]}")
        return str(Path(self.config.profile.output_dir).resolve())

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> InferenceServer:
        """Launch the server and, unless ``wait=False``, block until it is ready.

        Raises ServerStartError (with the log's cause and tail) if it dies while starting and
        ServerTimeoutError after ``startup_timeout``; in both cases nothing is left running.
        """
        self.launch()
        if wait:
            self.wait_until_ready()
        return self

    def launch(self) -> None:
        """Start the process and register it, without waiting for readiness."""
        with self._lock:
            if self.state not in ("new", "stopped", "exited", "crashed"):
                raise MixVLLMError(f"server {self.name} is already {self.state}")
            explicit_port = self.config.server.port is not None
            self.prepare()
            self.check_resources()
            if explicit_port:
                ensure_port_free(self.host, self.port)
            self.name = self._claim_name()
            try:
                self._spawn()
            except BaseException:
                registry.remove(self.name)
                raise
            self._set_state("starting")
            self._launched_at = time.monotonic()
            _LIVE_SERVERS.add(self)
            if not self.detach:
                self._start_watchdog()
            self._start_heartbeat()

    def _claim_name(self) -> str:
        requested = self.config.server.name
        if requested:
            if not registry.claim(requested):
                other = registry.get(requested, missing_ok=True)
                if other is not None and other.is_dead():
                    registry.remove(requested)
                    if registry.claim(requested):
                        return requested
                raise NameTakenError(
                    f"server.name: a server named {requested!r} is already registered; "
                    "choose another name or stop that server first"
                )
            return requested
        base = self.served_model_name.rstrip("/").split("/")[-1]
        for _ in range(100):
            candidate = registry.unique_name(base)
            if registry.claim(candidate):
                return candidate
        raise MixVLLMError(f"could not find a free server name starting with {base!r}")

    def _spawn(self) -> None:
        log_dir = Path(self.config.log_dir or registry.state_dir() / "logs").expanduser()
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_path = log_dir / f"{self.name}-{stamp}.log"
        marker = uuid.uuid4().hex
        # Jupyter's credentials stay out of the model server: it has no use for them.
        inherited = {k: v for k, v in os.environ.items() if k not in _JUPYTER_SECRETS}
        env = {**inherited, **self.get_launch_env(), MARKER_ENV: marker}
        env.setdefault("PYTHONUNBUFFERED", "1")
        command = self.get_launch_command()
        if self.config.profile.enabled:
            Path(self.config.profile.output_dir).mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            log_file.write(f"# mixvllm_nb: {' '.join(command)}\n".encode())
            log_file.flush()
            # A new session: the server is not in the kernel's process group, so an interrupt
            # (SIGINT to the group) or a kernel restart never reaches it by accident.
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        try:
            create_time = psutil.Process(self.process.pid).create_time()
        except psutil.Error:
            create_time = None
        self.record = registry.ServerRecord(
            name=self.name,
            backend=self.get_backend_name(),
            model=self.model,
            served_model_name=self.served_model_name,
            host=self.host,
            port=self.port,
            base_url=self.base_url,
            api_key=self.api_key,
            pid=self.process.pid,
            create_time=create_time,
            marker=marker,
            log_path=str(log_path),
            owner=_owner_info(self.owner_kind),
            identity=self.config.identity(),
            config=self.config.public_dict(),
            detached=self.detach,
        )
        registry.save(self.record)
        log.info("launched %s (pid %s), log %s", self.name, self.process.pid, log_path)

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Block until the server is ready; on death or timeout clean up and raise."""
        timeout = self.config.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                state = self.state
            if state == "ready":
                return
            if state in ("exited", "crashed", "stopped") or not self._main_alive():
                self._fail_start("exited while starting")
            if time.monotonic() > deadline:
                self._fail_start(f"not ready after {timeout:.0f} s", timeout_error=True)
            if self._probe_ready():
                return
            time.sleep(0.25)

    def _probe_ready(self) -> bool:
        with self._lock:
            if self.state != "starting" or not self.is_ready():
                return self.state == "ready"
            self._engine_pids = self._snapshot_children()
            self._set_state("ready")
            return True

    def _fail_start(self, what: str, *, timeout_error: bool = False) -> None:
        text = logs.read_text(self.log_path)
        cause = logs.failure_cause(text) or what
        code = self.process.poll() if self.process else None
        self.stop()
        if code is not None:
            self.exit_code = code
        self._set_state("crashed" if not timeout_error else "stopped")
        kind = ServerTimeoutError if timeout_error else ServerStartError
        exit_note = f" (exit code {code})" if code is not None else ""
        raise kind(
            f"{self.get_backend_name()} server {self.name} {what}{exit_note}: {cause}",
            cause=cause,
            log_tail=logs.tail(self.log_path, 40),
            log_path=self.log_path,
        )

    def check_health(self, timeout: float = 5.0) -> bool:
        """Return True when the health endpoint answers 200."""
        status, _ = http_get(self.get_health_endpoint(), api_key=self.api_key, timeout=timeout)
        return status == 200

    def stop(self, timeout: float = 15.0) -> StopReport:
        """Stop the whole process tree and verify that nothing is left and the port is free."""
        with self._lock:
            was = self.state
            self._stop_event.set()
            root = None
            if self.process is not None:
                root = psutil.Process(self.process.pid) if self.process.poll() is None else None
            elif self.record and self.record.pid:
                root = process_matches(self.record.pid, self.record.create_time)
            marker = self.record.marker if self.record else None
            report = stop_processes(root, marker, grace=timeout)
            if self.process is not None:
                try:
                    self.exit_code = self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if self.port:
                report.port_free = wait_port_free(self.host, self.port, timeout=10)
            self._stop_watchdog()
            if self.name:
                registry.remove(self.name)
            if was not in ("exited", "crashed"):
                self._set_state("stopped")
            _LIVE_SERVERS.discard(self)
        if self.config.debug_mode:
            for info in report.processes:
                log.warning("mixvllm_nb stop %s: %s", self.name, info)
            log.warning("mixvllm_nb stop %s: %s", self.name, report.summary())
        return report

    def _main_alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return bool(self.record and self.record.process_alive())

    def _snapshot_children(self) -> dict[int, float]:
        """Remember the engine processes, so that the heartbeat notices one dying."""
        if self.process is None:
            return {}
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
            return {child.pid: child.create_time() for child in children}
        except psutil.Error:
            return {}

    # -- heartbeat -------------------------------------------------------------------------------

    def on_state_change(self, callback: Callable[[InferenceServer, str], None]) -> None:
        """Call ``callback(server, new_state)`` from the heartbeat thread on every change."""
        self._listeners.append(callback)

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        if self.record is not None and state in ("ready", "unhealthy", "crashed", "exited"):
            registry.update(self.name, state=state, exit_code=self.exit_code)
        for callback in list(self._listeners):
            try:
                callback(self, state)
            except Exception:  # a broken listener must not kill the heartbeat
                log.exception("state listener failed")

    def _start_heartbeat(self) -> None:
        self._stop_event.clear()
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name=f"mixvllm-heartbeat-{self.name}", daemon=True
        )
        self._heartbeat.start()

    def _heartbeat_loop(self) -> None:
        failing_since: float | None = None
        interval = self.config.heartbeat_interval
        while not self._stop_event.wait(min(interval, 1.0) if self.state == "starting" else interval):
            with self._lock:
                if self._stop_event.is_set():
                    return
                code = self.process.poll() if self.process is not None else None
                if code is not None or not self._main_alive():
                    self.exit_code = code
                    self.error = logs.failure_cause(logs.tail(self.log_path, 200))
                    self._set_state("exited" if code == 0 else "crashed")
                    self._reap_leftovers()
                    return
                dead = [
                    pid for pid, ctime in self._engine_pids.items()
                    if process_matches(pid, ctime) is None
                ]
                if dead:
                    self.error = f"engine process(es) {dead} died"
                    self._set_state("crashed")
                    self._reap_leftovers()
                    return
                if self.state == "starting":
                    if not self._probe_ready() and time.monotonic() - self._launched_at > self.config.startup_timeout:
                        self.error = f"not ready after {self.config.startup_timeout:.0f} s"
                        threading.Thread(target=self.stop, daemon=True).start()  # stop() needs our lock
                        return
                    continue
                healthy = self.check_health(timeout=min(5.0, self.config.heartbeat_timeout))
                if healthy:
                    failing_since = None
                    self._set_state("ready")
                else:
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since >= self.config.heartbeat_timeout:
                        self._set_state("unhealthy")

    def _reap_leftovers(self) -> None:
        """After a crash, stop what survived (vLLM's engine children outlive their parent)."""
        marker = self.record.marker if self.record else None
        stop_processes(None, marker, grace=5)
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._stop_watchdog()

    # -- watchdog: stops the server if this process dies without stopping it ---------------------

    def _start_watchdog(self) -> None:
        if self.process is None or self.record is None:
            return
        me = psutil.Process()
        args = [
            sys.executable, "-m", "mixvllm_nb.process.watchdog",
            "--owner", f"{me.pid}:{me.create_time()}",
            "--server", f"{self.process.pid}:{self.record.create_time}",
            "--name", self.name,
        ]
        env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
        env["MIXVLLM_WATCHED_MARKER"] = self.record.marker or ""
        self._watchdog = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True, close_fds=True,
        )

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.poll() is None:
            self._watchdog.terminate()
            try:
                self._watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
        self._watchdog = None

    # -- conveniences ------------------------------------------------------------------------------

    def chat(self, message: str | list[dict[str, Any]], *, system: str | None = None,
             images: list[Any] | None = None, on_piece: Callable[[str], None] | None = None,
             **sampling: Any) -> Any:
        """Send one chat request and return a :class:`~mixvllm_nb.client.Reply` (``.text``, ``.usage``).

        ``message`` is the user's text (with optional ``images``: paths, URLs or bytes) or a whole
        OpenAI ``messages`` list. Sampling not given comes from the server's generation defaults.
        ``on_piece`` is called with each piece as it streams in.
        """
        from ..client import stream_chat, user_message

        messages = message if isinstance(message, list) else [user_message(message, images)]
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        return self._collect(stream_chat, messages, on_piece, sampling)

    def generate(self, prompt: str, *, on_piece: Callable[[str], None] | None = None, **sampling: Any) -> Any:
        """Complete ``prompt`` (no chat template) and return a :class:`~mixvllm_nb.client.Reply`."""
        from ..client import stream_completion

        return self._collect(stream_completion, prompt, on_piece, sampling)

    def _collect(self, stream: Callable[..., Any], payload: Any, on_piece: Callable[[str], None] | None,
                 sampling: dict[str, Any]) -> Any:
        from ..client import Reply, StreamStats, openai_client

        stats, pieces = StreamStats(), []
        with openai_client(self.base_url, self.api_key) as client:
            for piece in stream(client, self.served_model_name, payload, stats=stats, **sampling):
                pieces.append(piece)
                if on_piece is not None:
                    on_piece(piece)
        return Reply("".join(pieces), stats)

    def status(self) -> dict[str, Any]:
        """Return name, model, state, URL, pid, uptime and the KV cache vLLM reported."""
        kv = logs.kv_cache_report(logs.read_text(self.log_path)) if self.log_path else None
        started = self.record.started_at if self.record else None
        return {
            "name": self.name,
            "backend": self.get_backend_name(),
            "model": self.served_model_name,
            "state": self.state,
            "url": self.base_url if self.port else "",
            "pid": self.pid,
            "uptime_s": round(time.time() - started, 1) if started else None,
            "exit_code": self.exit_code,
            "error": self.error,
            "kv_cache": str(kv) if kv else None,
            "log_path": self.log_path,
        }

    def __enter__(self) -> InferenceServer:
        if self.state not in ("starting", "ready"):
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name or '(unnamed)'} {self.state} "
            f"model={self.served_model_name!r} url={self.base_url if self.port else '-'}>"
        )


def _build_config(
    backend: str, model: str | None, config: ServeConfig | dict | None, options: dict[str, Any]
) -> ServeConfig:
    """Merge a ServeConfig or seed-style dict with keyword options into a validated config."""
    from ..config import KEYWORD_PATHS, normalize_config_dict, set_dotted

    if isinstance(config, ServeConfig):
        data = config.model_dump(exclude_unset=True)
    else:
        data = normalize_config_dict({"config": config} if config else {})
    if backend != "base":
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


def _check_model_exists(name: str) -> None:
    looks_local = name.startswith(("/", "./", "../", "~")) or os.path.exists(name)
    if looks_local and not Path(name).expanduser().exists():
        raise ConfigError(
            f"model.name: {name!r} is not an existing folder; give a local model folder "
            "or a Hugging Face hub id such as 'org/model'"
        )


def _owner_info(kind: str) -> dict[str, Any]:
    me = psutil.Process()
    info: dict[str, Any] = {"kind": kind, "pid": me.pid, "create_time": me.create_time()}
    connection_file = _kernel_connection_file()
    if connection_file:
        info["kernel_connection_file"] = connection_file
    return info


def _kernel_connection_file() -> str:
    ipykernel = sys.modules.get("ipykernel.kernelapp")
    app = getattr(getattr(ipykernel, "IPKernelApp", None), "_instance", None)
    return str(getattr(app, "connection_file", "") or "")


def live_servers() -> list[InferenceServer]:
    """Return the servers this process launched and has not stopped."""
    return [s for s in _LIVE_SERVERS if s.state in ("starting", "ready", "unhealthy")]


@atexit.register
def _stop_owned_servers() -> None:
    for server in live_servers():
        if not server.detach:
            try:
                server.stop(timeout=10)
            except Exception:  # exiting anyway: never let one failure block the others
                log.exception("could not stop %s at exit", server.name)

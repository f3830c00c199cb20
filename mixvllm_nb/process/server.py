"""One server process: launch, readiness, state, and a stop that leaves nothing behind.

:class:`ServerProcess` is the lifecycle alone. What to launch and how to probe it are the hooks
that :class:`mixvllm_nb.backends.base.InferenceServer` and its backends provide (``build_command``,
``build_env``, ``is_ready``, ``default_model``, ``check_resources``). Every front starts servers
through :func:`mixvllm_nb.api.serve`, which ends here, in :meth:`ServerProcess.launch`.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from typing import ClassVar

import psutil

from ..config import ServeConfig
from ..config.schema import new_api_key
from ..errors import ConfigError, MixVLLMError, NameTakenError, ServerStartError, ServerTimeoutError
from . import heartbeat, launchers, logs, ownership, registry
from .http import http_get
from .ports import ensure_port_free, free_port, is_loopback, port_is_free, url_host, wait_port_free
from .ray_jobs import RayJob
from .states import State
from .stopping import stop_job
from .tree import StopReport, listens_on, marked_listener, process_matches, start_stamp, stop_processes

log = logging.getLogger("mixvllm_nb")



class ServerProcess:
    """A model server run as a background process in its own session, tracked until it is stopped."""

    backend_name: ClassVar[str] = "base"
    # Whether the backend can run as a job on a Ray cluster (``cluster.address``).
    runs_on_cluster: ClassVar[bool] = False

    def __init__(self, config: ServeConfig, *, detach: bool = False, owner_kind: str = "python") -> None:
        self.config = config
        self.detach = detach
        self.owner_kind = owner_kind
        self._state = State.NEW
        self.exit_code: int | None = None
        self.error: str = ""
        self.name = ""
        self.process: subprocess.Popen | None = None
        self.record: registry.ServerRecord | None = None
        self.resolved = False  # prepare() has filled in the model, port and key
        self.engine_pids: dict[int, float | None] = {}
        self.stop_event = threading.Event()
        self.lock = threading.RLock()
        self.job: RayJob | None = None  # a server on a Ray cluster: its job, in place of ``process``
        self._log_job: RayJob | None = None  # the job whose log refresh_log copies (kept: it remembers what it has)
        self._watchdog: subprocess.Popen | None = None
        self._launched_at = 0.0

    # -- hooks: what a backend provides (backends.base.InferenceServer) --------------------------

    def get_backend_name(self) -> str: return self.backend_name  # noqa: E704  (vllm, sglang, ...)
    def get_launch_command(self) -> list[str]: raise NotImplementedError  # noqa: E704
    def get_launch_env(self) -> dict[str, str]: raise NotImplementedError  # noqa: E704
    def get_health_endpoint(self) -> str: raise NotImplementedError  # noqa: E704
    def is_ready(self) -> bool: raise NotImplementedError  # noqa: E704
    def default_model(self, *, convert: bool = True) -> tuple[str, str]: raise NotImplementedError  # noqa: E704

    def check_resources(self) -> None:
        """Raise ConfigError, before anything is launched, when this machine cannot run the config."""

    def cluster_gpus(self) -> int:
        """Return the GPUs a cluster job asks Ray for (the backend knows its parallel layout; none by default)."""
        return 0

    @property
    def on_cluster(self) -> bool:
        """True when the server runs as a job on a Ray cluster (``cluster.address``), not on this machine."""
        return bool(self.config.cluster.address)

    # -- state -----------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """Where the server is in its life (:class:`~mixvllm_nb.process.states.State`)."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = State(value)

    def set_state(self, state: State) -> None:
        """Change the state and write the ones other processes must see to the registry."""
        state = State(state)
        if state == self._state:
            return
        self._state = state
        if self.record is not None and state in (State.READY, State.UNHEALTHY, State.CRASHED, State.EXITED):
            registry.update(self.name, state=str(state), exit_code=self.exit_code)

    # -- resolved settings -----------------------------------------------------------------------

    def prepare(self, *, convert_default_model: bool = True) -> None:
        """Resolve what the config leaves open: the model, port, key and profiler folder."""
        if self.resolved:
            return
        cfg = self.config
        if cfg.model.name is None:
            model_name, served = self.default_model(convert=convert_default_model)
            cfg.model.name = model_name
            if cfg.model.served_model_name is None:
                cfg.model.served_model_name = served
        elif not self.on_cluster:  # a path on a cluster is the nodes' to have
            launchers.check_model_exists(cfg.model.name)
        if cfg.server.port is None and not self.on_cluster:  # on a cluster, the node the job lands on picks it
            cfg.server.port = free_port(cfg.server.host)
        if cfg.server.api_key is None:
            cfg.server.api_key = new_api_key()
        if cfg.profile.enabled:  # once: a later stop or another process must find the same folder
            cfg.profile.output_dir = cfg.profile.output_dir.expanduser().resolve()
        self.resolved = True

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
    def attached(self) -> bool:
        """True for an external endpoint registered with attach: never started or stopped by us."""
        return self.record is not None and self.record.attached

    @property
    def base_url(self) -> str:
        """The server's root URL for a client on this machine."""
        if self.record is not None and self.record.attached:
            return self.record.base_url
        return f"http://{url_host(self.host)}:{self.port}"

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

    # -- launch ----------------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> ServerProcess:
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
        with self.lock:
            if self.state not in (State.NEW, State.STOPPED, State.EXITED, State.CRASHED):
                raise MixVLLMError(f"server {self.name} is already {self.state}")
            if self.on_cluster and not self.runs_on_cluster:
                raise ConfigError(f"cluster.address: the {self.backend_name} backend runs on this machine only; "
                                  "use backend vllm on a Ray cluster")
            explicit_port = self.config.server.port is not None
            self.prepare()
            self.check_resources()
            job_gpus = self.cluster_gpus() if self.on_cluster else 0  # refused here, before a name is claimed
            if explicit_port and not self.on_cluster:
                ensure_port_free(self.host, self.port)
            self.name = self._claim_name()
            try:
                self._spawn(job_gpus)
            except BaseException:  # nothing half-started may stay: the process or job, if it began, and its name
                if self.process is not None and self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()
                if self.job is not None:
                    self.job.stop()
                registry.remove(self.name)
                raise
            self.set_state(State.STARTING)
            self._launched_at = time.monotonic()
            ownership.track(self)
            if not self.detach and self.record is not None:
                self._watchdog = ownership.start_watchdog(self.record, self.name)
            self.stop_event.clear()
            heartbeat.start(self)

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

    def _spawn(self, job_gpus: int = 0) -> None:
        """Start the server where its config says: a process here, or a job on a Ray cluster."""
        if self.on_cluster:
            launchers.submit_job(self, job_gpus)
        else:
            launchers.start_process(self)
        self.record = registry.get(self.name)

    # -- readiness -------------------------------------------------------------------------------

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Block until the server is ready; on death or timeout clean up and raise."""
        timeout = self.config.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                state = self.state
            if state == State.READY:
                return
            if state.ended or not self.main_alive():
                self._fail_start("exited while starting")
            if time.monotonic() > deadline:
                self._fail_start(f"not ready after {timeout:.0f} s", timeout_error=True)
            if self.probe_ready():
                return
            time.sleep(0.25)

    def probe_ready(self) -> bool:
        """Ask a starting server whether it is ready now; remember its engine processes when it is."""
        with self.lock:
            # Nothing is asked (with the key) of a port that another program holds: it would get the key.
            if self.state != State.STARTING or not self._ours_listens() or not self.is_ready():
                return self.state == State.READY
            self.engine_pids = self._snapshot_children()
            self.set_state(State.READY)
            return True

    def _ours_listens(self) -> bool:
        """True when the port is held by this server: its process here, or a local job carrying its marker.

        A job on another machine cannot be checked from here; its node's address came from the job itself.
        """
        if self.job is None:
            return listens_on(self.pid, self.port)
        return not is_loopback(self.host) or marked_listener(self.port, self.record.marker if self.record else None)

    def starting_for(self) -> float:
        """Return the seconds since launch."""
        return time.monotonic() - self._launched_at

    def _fail_start(self, what: str, *, timeout_error: bool = False) -> None:
        self.refresh_log()  # a Ray job's last lines, copied before they are read
        text = logs.read_text(self.log_path)
        cause = (launchers.job_failure(text) if self.on_cluster else logs.failure_cause(text)) or what
        code = self.poll()
        self.stop()
        if code is not None:
            self.exit_code = code
        self.set_state(State.STOPPED if timeout_error else State.CRASHED)
        kind = ServerTimeoutError if timeout_error else ServerStartError
        exit_note = f" (exit code {code})" if code is not None else ""
        raise kind(
            f"{self.backend_name} server {self.name} {what}{exit_note}: {cause}",
            cause=cause, log_tail=logs.tail(self.log_path, 40), log_path=self.log_path,
        )

    def check_health(self, timeout: float = 5.0) -> bool:
        """Return True when the health endpoint answers 200."""
        status, _ = http_get(self.get_health_endpoint(), api_key=self.api_key, timeout=timeout)
        return status == 200

    def main_alive(self) -> bool:
        """Return True while the server's main process (or its Ray job) runs."""
        if self.process is not None or self.job is not None:
            return self.poll() is None
        return bool(self.record and self.record.process_alive())

    def refresh_log(self) -> None:
        """Copy a Ray job's log from the cluster into the local log (at most twice a second; a local one is live)."""
        cluster = self.record.cluster if self.record else {}
        if cluster and self.log_path:
            if self._log_job is None:
                self._log_job = self.job or RayJob.from_record(cluster)
            self._log_job.mirror_log(self.log_path, every=0.5)

    def poll(self) -> int | None:
        """Return the exit code of our own process or job once it has ended."""
        if self.job is not None:
            return self.job.poll()
        return self.process.poll() if self.process is not None else None

    def _snapshot_children(self) -> dict[int, float | None]:
        """Remember the engine processes, so that the heartbeat notices one dying."""
        if self.process is None:
            return {}
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return {}
        return {child.pid: start_stamp(child.pid) for child in children}

    # -- stop ------------------------------------------------------------------------------------

    def stop(self, timeout: float = 15.0) -> StopReport:
        """Stop the whole process tree and verify that nothing is left and the port is free."""
        with self.lock:
            was = self.state
            self.stop_event.set()
            root = None
            if self.process is not None:
                root = psutil.Process(self.process.pid) if self.process.poll() is None else None
            elif self.record and self.record.pid:
                root = process_matches(self.record.pid, self.record.create_time)
            if self.record is not None and self.record.cluster:
                self.refresh_log()  # its last lines, while Ray still has them
                report = stop_job(self.record, grace=timeout)  # Ray stops it; its port is checked from here
            else:
                report = stop_processes(root, self.record.marker if self.record else None, grace=timeout)
                self.wait_exit(5)
                if self.port:  # wait only when we stopped something: a port another program holds never frees
                    report.port_free = (wait_port_free(self.host, self.port, timeout=10) if report.processes
                                        else port_is_free(self.host, self.port))
            if report.job_running:  # Ray did not end it: it stays registered (and watched) for another stop
                return report
            self.stop_watchdog()
            if self.name:
                registry.remove(self.name)
            if was not in (State.EXITED, State.CRASHED):
                self.set_state(State.STOPPED)
            ownership.forget(self)
        if self.config.debug_mode:
            for info in report.processes:
                log.warning("mixvllm_nb stop %s: %s", self.name, info)
            log.warning("mixvllm_nb stop %s: %s", self.name, report.summary())
        return report

    def wait_exit(self, timeout: float) -> None:
        """Wait for our own child process to be reaped (it may already be), recording its exit code."""
        if self.process is None:
            return
        try:
            self.exit_code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def stop_watchdog(self) -> None:
        """Stop the watchdog of this server (it is stopping, or was stopped)."""
        ownership.stop_watchdog(self._watchdog)
        self._watchdog = None

    # -- conveniences ----------------------------------------------------------------------------

    def __enter__(self) -> ServerProcess:
        if not self.state.live:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name or '(unnamed)'} {self.state} "
            f"model={self.served_model_name!r} url={self.base_url if self.port else '-'}>"
        )


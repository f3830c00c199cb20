"""The heartbeat: a thread per launched server that keeps its state true while it runs.

It notices the main process exiting (``exited`` or ``crashed``), an engine process dying while
``/health`` still answers (vLLM's API server outlives its ``EngineCore``), readiness, a start-up that
runs past ``startup_timeout``, and health checks failing for ``heartbeat_timeout`` (``unhealthy``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING

from . import logs
from .states import State
from .tree import process_matches, stop_processes

if TYPE_CHECKING:
    from .server import ServerProcess

log = logging.getLogger("mixvllm_nb")


def start(server: ServerProcess) -> threading.Thread:
    """Start the heartbeat thread of ``server`` (a daemon: it never keeps the interpreter alive)."""
    thread = threading.Thread(target=_loop, args=(server,), name=f"mixvllm-heartbeat-{server.name}", daemon=True)
    thread.start()
    return thread


def _loop(server: ServerProcess) -> None:
    failing_since: float | None = None
    config = server.config
    stop_event = server.stop_event
    while not stop_event.wait(min(config.heartbeat_interval, 1.0) if server.state == State.STARTING
                              else config.heartbeat_interval):
        with server.lock:
            if stop_event.is_set():
                return
            code = server.poll()
            if code is not None or not server.main_alive():
                server.refresh_log()  # a Ray job's last lines, copied before they are read
                server.exit_code = code
                server.error = end_cause(code, server.log_path)
                server.set_state(State.EXITED if code == 0 else State.CRASHED)
                reap_leftovers(server)
                return
            dead = [pid for pid, stamp in server.engine_pids.items() if process_matches(pid, stamp) is None]
            if dead:
                server.error = with_log(f"engine process(es) {dead} died", server.log_path)
                server.set_state(State.CRASHED)
                reap_leftovers(server)
                return
            if server.state == State.STARTING:
                if not server.probe_ready() and server.starting_for() > config.startup_timeout:
                    server.error = f"not ready after {config.startup_timeout:.0f} s"
                    threading.Thread(target=server.stop, daemon=True).start()  # stop() needs the lock we hold
                    return
                continue
            if server.check_health(timeout=min(5.0, config.heartbeat_timeout)):
                failing_since = None
                server.set_state(State.READY)
            else:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since >= config.heartbeat_timeout:
                    server.set_state(State.UNHEALTHY)
        periodic = getattr(server, "on_heartbeat", None)  # a backend's own periodic work (idle sleep), unlocked
        if periodic is not None and server.state == State.READY:
            try:
                periodic()
            except Exception:  # the heartbeat must outlive any of it
                log.exception("mixvllm_nb: %s: periodic work failed", server.name)


def end_cause(code: int | None, log_path: str) -> str:
    """Return in one line how the server's process ended: its exit status, and the log's error or last line.

    A process killed from outside (SIGKILL, the OOM killer) logs no error: its last log line is then
    what tells a user where it was (``%vllm_logs`` shows more).
    """
    if code is None:
        how = "its process is gone"
    elif code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return with_log(how, log_path)


def with_log(how: str, log_path: str) -> str:
    """Return ``how`` followed by the log's most telling error line, else by its last line."""
    text = logs.tail(log_path, 200)
    cause = logs.failure_cause(text)
    if cause:
        return f"{how}: {cause}"
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    return f"{how}; its log ends with: {last[:300]}" if last else f"{how}; its log is empty"


def reap_leftovers(server: ServerProcess) -> None:
    """After a crash, stop what survived (vLLM's engine children outlive their parent)."""
    marker = server.record.marker if server.record else None
    stop_processes(None, marker, grace=5)
    server.wait_exit(5)
    server.stop_watchdog()

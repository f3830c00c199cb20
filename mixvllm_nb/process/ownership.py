"""Who owns a server, and what stops it when its owner goes: the watchdog process and the atexit hook.

A server belongs to the process that launched it (a kernel, the CLI, a Jupyter server, a script)
unless launched with ``detach``. The owner stops it on a clean exit (``atexit``); a small watchdog
process stops it within seconds when the owner dies without running its exit handlers (SIGKILL).
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import weakref
from typing import TYPE_CHECKING, Any

from .tree import MARKER_ENV, process_matches, start_stamp

if TYPE_CHECKING:
    from .registry import ServerRecord
    from .server import ServerProcess

log = logging.getLogger("mixvllm_nb")
_LIVE: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


def owner_info(kind: str) -> dict[str, Any]:
    """Return what a registry record says about its owner: kind, pid, start stamp, kernel connection file."""
    pid = os.getpid()
    info: dict[str, Any] = {"kind": kind, "pid": pid, "create_time": start_stamp(pid)}
    ipykernel = sys.modules.get("ipykernel.kernelapp")
    app = getattr(getattr(ipykernel, "IPKernelApp", None), "_instance", None)
    connection_file = str(getattr(app, "connection_file", "") or "")
    if connection_file:
        info["kernel_connection_file"] = connection_file
    return info


def orphaned(record: ServerRecord) -> bool:
    """Return True for a server whose owner has died: its watchdog is stopping it, so it must not be reused.

    Between an owner's SIGKILL and its watchdog's stop (about a second) the server still answers; a new
    kernel that reused it then would be left with a server about to vanish. Detached and attached
    servers have no owner to outlive; a record that names no owner is taken as owned by someone alive.
    """
    if record.attached or record.detached:
        return False
    owner = record.owner or {}
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    stamp = owner.get("create_time")
    return process_matches(pid, stamp if isinstance(stamp, int | float) else None) is None


def owner_elsewhere(record: ServerRecord) -> str | None:
    """Return who else owns this server and is alive ("a kernel (pid 812)"), or None when nobody else does.

    None for this process's own servers, detached and attached ones, and those whose owner has died.
    """
    owner = record.owner or {}
    pid = owner.get("pid")
    if record.attached or record.detached or not isinstance(pid, int) or pid == os.getpid() or orphaned(record):
        return None
    kind = {"python": "Python process", "cli": "mixvllm-serve process", "jupyter-server": "Jupyter server"}.get(
        owner.get("kind") or "", owner.get("kind") or "process")
    return f"a {kind} (pid {pid})"


def start_watchdog(record: ServerRecord, name: str) -> subprocess.Popen:
    """Start the watchdog that stops a server (its process tree, or its Ray job) if this process dies."""
    me = os.getpid()
    args = [sys.executable, "-m", "mixvllm_nb.process.watchdog", "--owner", f"{me}:{start_stamp(me)}", "--name", name]
    if record.cluster:
        args += ["--job", record.cluster["job_id"]]
    else:
        args += ["--server", f"{record.pid or 0}:{record.create_time}"]
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    env["MIXVLLM_WATCHED_MARKER"] = record.marker or ""
    return subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env, start_new_session=True, close_fds=True,
    )


def stop_watchdog(watchdog: subprocess.Popen | None) -> None:
    """Stop a watchdog process (the server it watched is stopping, or was stopped)."""
    if watchdog is None or watchdog.poll() is not None:
        return
    watchdog.terminate()
    try:
        watchdog.wait(timeout=5)
    except subprocess.TimeoutExpired:
        watchdog.kill()


def track(server: ServerProcess) -> None:
    """Remember a server this process launched, so that it is stopped at exit unless detached."""
    _LIVE.add(server)


def forget(server: ServerProcess) -> None:
    """Forget a server this process stopped."""
    _LIVE.discard(server)


def live_servers() -> list[ServerProcess]:
    """Return the servers this process launched and has not stopped."""
    return [s for s in _LIVE if s.state.live]


@atexit.register
def stop_owned_servers() -> None:
    """Stop every server this process owns that was not detached (also called when a kernel unloads us)."""
    for server in live_servers():
        if not server.detach:
            try:
                server.stop(timeout=10)
            except Exception:  # exiting anyway: never let one failure block the others
                log.exception("could not stop %s at exit", server.name)

"""Process trees: find every process of a server, including orphans, and stop them all.

vLLM runs as an API server plus ``VLLM::EngineCore`` and ``VLLM::Worker`` children, and a SIGKILL
of the API server leaves those children running (FINDINGS.md). Descendants alone are not enough
once a child has been re-parented, so every server is launched with a marker in its environment
(inherited by all its children) and found again by that marker.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import psutil

MARKER_ENV = "MIXVLLM_SERVER_ID"


@dataclass
class ProcessInfo:
    """One process we checked when stopping a server, and how it ended."""

    pid: int
    name: str
    outcome: str = "running"  # "exited", "terminated", "killed", "running"

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.name}): {self.outcome}"


@dataclass
class StopReport:
    """What stopping a server did: each process checked, what is left, whether the port is free."""

    processes: list[ProcessInfo] = field(default_factory=list)
    leftover: list[int] = field(default_factory=list)
    port_free: bool = True

    @property
    def clean(self) -> bool:
        """True when no process is left and the port is free."""
        return not self.leftover and self.port_free

    def summary(self) -> str:
        """Return one line: how many processes were stopped and whether anything is left."""
        if self.clean:
            return f"stopped {len(self.processes)} process(es); nothing left, port free"
        left = ", ".join(map(str, self.leftover)) or "none"
        return f"stopped with leftovers: pids {left}; port free: {self.port_free}"


def is_alive(proc: psutil.Process) -> bool:
    """Return True when ``proc`` still runs (a zombie counts as gone)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start_stamp(pid: int) -> float | None:
    """Return when process ``pid`` started, in seconds after boot (None when it is gone).

    This is the process's identity next to its pid. psutil's ``create_time()`` adds the boot time,
    which moves by whole seconds when the wall clock is stepped (NTP, a resume): compared across
    such a step, a live server would look like a new process. The kernel's own start tick does not move.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": field 3 onwards
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in clock ticks
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):  # no /proc (not Linux): psutil's time is the best we have
        try:
            return psutil.Process(pid).create_time()
        except psutil.Error:
            return None


def process_matches(pid: int, stamp: float | None) -> psutil.Process | None:
    """Return the process ``pid`` if it is alive and is the same one (same :func:`start_stamp`)."""
    try:
        proc = psutil.Process(pid)
        if stamp is not None:
            current = start_stamp(pid)
            if current is None or abs(current - stamp) > 0.001:
                return None
        return proc if is_alive(proc) else None
    except psutil.Error:
        return None


def marked_processes(marker: str) -> list[psutil.Process]:
    """Return the live processes whose environment carries ``MIXVLLM_SERVER_ID=marker``."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(MARKER_ENV) == marker and is_alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def server_processes(root: psutil.Process | None, marker: str | None) -> list[psutil.Process]:
    """Return the root, its descendants and every process carrying the marker, without repeats."""
    procs: dict[int, psutil.Process] = {}
    if root is not None and is_alive(root):
        procs[root.pid] = root
        try:
            for child in root.children(recursive=True):
                procs.setdefault(child.pid, child)
        except psutil.Error:
            pass
    if marker:
        for proc in marked_processes(marker):
            procs.setdefault(proc.pid, proc)
    return list(procs.values())


def _name(proc: psutil.Process) -> str:
    try:
        cmdline = proc.cmdline()
        # vLLM renames its children (setproctitle): the title is the first argv entry.
        if cmdline and cmdline[0].startswith("VLLM::"):
            return cmdline[0]
        return proc.name()
    except psutil.Error:
        return "?"


def stop_processes(
    root: psutil.Process | None,
    marker: str | None,
    *,
    grace: float = 10.0,
    kill_wait: float = 5.0,
) -> StopReport:
    """Stop a server's whole tree: TERM the root, then TERM the rest, then KILL what is left.

    The root gets the first TERM alone so that the server can shut its children down itself
    (vLLM releases GPU memory that way); anything still alive after ``grace`` seconds is
    escalated. Returns a report of every process seen.
    """
    procs = server_processes(root, marker)
    infos = {p.pid: ProcessInfo(p.pid, _name(p)) for p in procs}
    if not procs:
        return StopReport()
    first = [root] if root is not None and root.pid in infos else procs
    _signal_all(first, signal.SIGTERM)
    gone, alive = psutil.wait_procs(procs, timeout=grace / 2)
    if alive:
        _signal_all(alive, signal.SIGTERM)
        more_gone, alive = psutil.wait_procs(alive, timeout=grace / 2)
        gone += more_gone
    for proc in gone:
        infos[proc.pid].outcome = "terminated"
    if alive:
        _signal_all(alive, signal.SIGKILL)
        killed, alive = psutil.wait_procs(alive, timeout=kill_wait)
        for proc in killed:
            infos[proc.pid].outcome = "killed"
    # A late child may have been forked while we were stopping: sweep the marker once more.
    stragglers = [p for p in server_processes(None, marker) if p.pid not in infos]
    for proc in stragglers:
        infos[proc.pid] = ProcessInfo(proc.pid, _name(proc), "killed")
        _signal_all([proc], signal.SIGKILL)
    deadline = time.monotonic() + kill_wait
    leftover = [p for p in alive + stragglers if is_alive(p)]
    while leftover and time.monotonic() < deadline:
        time.sleep(0.1)
        leftover = [p for p in leftover if is_alive(p)]
    for proc in leftover:
        infos[proc.pid].outcome = "running"
    return StopReport(list(infos.values()), [p.pid for p in leftover])


def _signal_all(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass

"""Process trees: find every process of a server, including orphans, and stop them all.

vLLM runs as an API server plus ``VLLM::EngineCore`` and ``VLLM::Worker`` children, and a SIGKILL
of the API server leaves those children running (docs/FINDINGS.md). Descendants alone are not enough
once a child has been re-parented, so every server is launched with a marker in its environment
(inherited by all its children) and found again by that marker.

A process is known by its pid and its :func:`start_stamp`, never by the pid alone, and nothing is
signalled unless it carries the server's marker: a pid that now belongs to someone else is left alone.
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
    """What stopping a server did: each process checked, what is left, whether the port is free.

    ``foreign`` lists pids the record pointed at that do not carry the server's marker (a reused
    pid, another program): they were never signalled and do not count as left over.
    """

    processes: list[ProcessInfo] = field(default_factory=list)
    leftover: list[int] = field(default_factory=list)
    port_free: bool = True
    foreign: list[int] = field(default_factory=list)
    job: str = ""  # a server on a Ray cluster: its job id
    job_state: str = ""  # Ray's state of that job after the stop (STOPPED, or what it still is)

    @property
    def job_running(self) -> bool:
        """True when a Ray job was asked to stop and Ray still says it runs."""
        return self.job_state in ("PENDING", "RUNNING")

    @property
    def clean(self) -> bool:
        """True when no process (or job) is left and the port is free."""
        return not self.leftover and self.port_free and self.job_state in ("", "STOPPED", "SUCCEEDED", "FAILED")

    def summary(self) -> str:
        """Return one line: how many processes were stopped and whether anything is left."""
        alone = f"; left alone pid(s) {', '.join(map(str, self.foreign))} (not this server's)" if self.foreign else ""
        if self.job and self.job_state == "UNKNOWN":
            return (f"its cluster did not answer: Ray job {self.job}'s state is unknown (it ended with the cluster, "
                    f"or stop it there: ray job stop {self.job}); forgotten here")
        if self.job:
            port = "port closed" if self.port_free else "its port still answers"
            if self.clean:
                return f"stopped Ray job {self.job} ({self.job_state}); nothing left, {port}"
            return (f"Ray job {self.job} is still {self.job_state}; {port}; kept registered: stop it again, or "
                    f"`ray job stop {self.job}` on the cluster")
        if self.clean:
            return f"stopped {len(self.processes)} process(es); nothing left, port free{alone}"
        left = ", ".join(map(str, self.leftover)) or "none"
        return f"stopped with leftovers: pids {left}; port free: {self.port_free}{alone}"


def launch_env(marker: str) -> dict[str, str]:
    """Return the environment variables that mark a server's processes as its own.

    ``SPT_NOENV`` keeps setproctitle (vLLM titles its children ``VLLM::...``) from writing the
    title over the environment block, which would erase the marker from ``/proc/<pid>/environ``.
    """
    return {MARKER_ENV: marker, "SPT_NOENV": "1"}


def is_alive(proc: psutil.Process) -> bool:
    """Return True when ``proc`` still runs (a zombie counts as gone)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stat(pid: int) -> tuple[str, float] | None:
    """Return (state letter, start stamp) from /proc, None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": field 3 onwards
        return fields[0].decode(), int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):  # no /proc (not Linux): psutil's time is the best we have
        try:
            proc = psutil.Process(pid)
            return ("Z" if proc.status() == psutil.STATUS_ZOMBIE else "R"), proc.create_time()
        except psutil.Error:
            return None


def start_stamp(pid: int) -> float | None:
    """Return when process ``pid`` started, in seconds after boot (None when it is gone).

    This is the process's identity next to its pid. psutil's ``create_time()`` adds the boot time,
    which moves by whole seconds when the wall clock is stepped (NTP, a resume): compared across
    such a step, a live server would look like a new process. The kernel's own start tick does not move.
    """
    stat = _stat(pid)
    return stat[1] if stat else None


def _same(stamp: float | None, current: float) -> bool:
    return stamp is None or abs(current - stamp) <= 0.001


def process_matches(pid: int, stamp: float | None) -> psutil.Process | None:
    """Return the process ``pid`` if it is alive and is the same one (same :func:`start_stamp`)."""
    try:
        proc = psutil.Process(pid)
        if stamp is not None:
            current = start_stamp(pid)
            if current is None or not _same(stamp, current):
                return None
        return proc if is_alive(proc) else None
    except psutil.Error:
        return None


def process_marker(pid: int) -> str | None:
    """Return the server marker in process ``pid``'s environment (None: none, gone, or not ours to read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            block = handle.read()
    except FileNotFoundError:
        return None
    except PermissionError:  # another user's process: never ours
        return None
    except OSError:
        try:
            return psutil.Process(pid).environ().get(MARKER_ENV)
        except psutil.Error:
            return None
    prefix = MARKER_ENV.encode() + b"="
    for entry in block.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def carries_marker(pid: int, marker: str | None) -> bool:
    """Return True when process ``pid`` was started with ``MIXVLLM_SERVER_ID=marker``."""
    return bool(marker) and process_marker(pid) == marker


def marked_processes(marker: str) -> list[psutil.Process]:
    """Return the live processes whose environment carries ``MIXVLLM_SERVER_ID=marker``."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid != me and carries_marker(proc.pid, marker) and is_alive(proc):
            found.append(proc)
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


def _own_processes(root: psutil.Process | None, marker: str | None) -> tuple[dict[int, float], list[int]]:
    """Split what ``root`` and ``marker`` point at into ours (pid -> stamp) and foreign pids.

    The root must carry the marker. Its descendants must carry it too, or carry no marker at all:
    setproctitle without ``SPT_NOENV`` blanks a child's environment block, but a current child of
    a process proven ours is ours. A process with another server's marker is never ours.
    """
    ours: dict[int, float] = {}
    foreign: list[int] = []
    if root is not None and is_alive(root):
        stamp = start_stamp(root.pid)
        if stamp is None or not carries_marker(root.pid, marker):
            foreign.append(root.pid)
        else:
            ours[root.pid] = stamp
            try:
                children = root.children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                found, child_stamp = process_marker(child.pid), start_stamp(child.pid)
                if child_stamp is not None and found in (marker, None):
                    ours[child.pid] = child_stamp
    if marker:
        for proc in marked_processes(marker):
            stamp = start_stamp(proc.pid)
            if stamp is not None:
                ours.setdefault(proc.pid, stamp)
    return ours, foreign


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
    escalated. Only processes carrying ``MIXVLLM_SERVER_ID=marker`` are signalled (see
    :func:`_own_processes`); a root without it is reported in ``foreign`` and left alone.
    Returns a report of every process seen.
    """
    ours, foreign = _own_processes(root, marker)
    infos = {pid: ProcessInfo(pid, _pid_name(pid)) for pid in ours}
    if not ours:
        return StopReport(foreign=foreign)
    first = [root.pid] if root is not None and root.pid in ours else list(ours)
    _signal({pid: ours[pid] for pid in first}, signal.SIGTERM)
    alive = _wait(ours, grace / 2)
    if alive:
        _signal(alive, signal.SIGTERM)
        alive = _wait(alive, grace / 2)
    for pid in ours:
        if pid not in alive:
            infos[pid].outcome = "terminated"
    if alive:
        _signal(alive, signal.SIGKILL)
        still = _wait(alive, kill_wait)
        for pid in alive:
            if pid not in still:
                infos[pid].outcome = "killed"
        alive = still
    # A late child may have been forked while we were stopping: sweep the marker once more.
    stragglers: dict[int, float] = {}
    for proc in marked_processes(marker) if marker else []:
        stamp = start_stamp(proc.pid)
        if proc.pid not in infos and stamp is not None:
            stragglers[proc.pid] = stamp
            infos[proc.pid] = ProcessInfo(proc.pid, _pid_name(proc.pid), "killed")
    _signal(stragglers, signal.SIGKILL)
    leftover = _wait({**alive, **stragglers}, kill_wait)
    for pid in leftover:
        infos[pid].outcome = "running"
    return StopReport(list(infos.values()), list(leftover), foreign=foreign)


def _pid_name(pid: int) -> str:
    try:
        return _name(psutil.Process(pid))
    except psutil.Error:
        return "?"


def _alive(pid: int, stamp: float) -> bool:
    """Return True while the process ``pid`` that started at ``stamp`` runs (a zombie is gone)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X", "x") and _same(stamp, stat[1])


def _wait(procs: dict[int, float], timeout: float) -> dict[int, float]:
    """Wait up to ``timeout`` seconds for ``procs`` to end; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = {pid: stamp for pid, stamp in procs.items() if _alive(pid, stamp)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = {pid: stamp for pid, stamp in alive.items() if _alive(pid, stamp)}
    return alive


def _signal(procs: dict[int, float], sig: signal.Signals) -> None:
    """Send ``sig`` to each process that is still the one we checked (same pid and start stamp).

    A pidfd pins the process between the check and the signal, so a pid reused in between is never hit.
    """
    for pid, stamp in procs.items():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except (AttributeError, OSError):
            fd = None
        try:
            if not _alive(pid, stamp):
                continue
            if fd is not None:
                signal.pidfd_send_signal(fd, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue
        finally:
            if fd is not None:
                os.close(fd)


def marked_listener(port: int, marker: str | None) -> bool:
    """Return True when a process carrying ``marker`` listens on TCP ``port`` here (a job of a local Ray cluster)."""
    try:
        listening = [c.pid for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid]
    except psutil.Error:
        return False
    return any(carries_marker(pid, marker) for pid in listening)


def listens_on(pid: int | None, port: int) -> bool:
    """Return True when process ``pid`` or one of its descendants listens on TCP ``port``.

    A port chosen free can be taken by another program before the engine binds it (the engine takes
    seconds to import); that program would then receive the readiness probe, with the key.
    """
    if not pid or not port:
        return False
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    for proc in procs:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in proc.net_connections(kind="inet")):
                return True
        except psutil.Error:
            continue
    return False

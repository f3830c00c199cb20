"""Telling live from dead, with real processes: identity across a clock step, the marker before any
signal, a private state dir, updates that cannot resurrect a removed record, stopping from a record.

The wall clock itself is never stepped here (it would disturb every other process on the machine):
psutil's boot time, from which psutil derives ``create_time``, is moved instead, in this process by
monkeypatch and in a watchdog child by a two-line wrapper. That is exactly what an NTP step or a
resume does to psutil (``/proc/stat``'s btime moves); the kernel's start ticks do not move.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import psutil._pslinux
import pytest

from mixvllm_nb.errors import ConfigError, MixVLLMError
from mixvllm_nb.process import registry
from mixvllm_nb.process.ports import port_is_free
from mixvllm_nb.process.stopping import stop_record
from mixvllm_nb.process.tree import MARKER_ENV, process_matches, start_stamp, stop_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process identity is read from /proc")

ROOT = Path(__file__).resolve().parents[1]

# A child that writes down any catchable signal it gets (then exits), else sleeps: "never signalled"
# is checked by its file staying empty and by it staying alive (which covers SIGKILL).
RECORDER = textwrap.dedent(
    """
    import signal, sys, time
    log = sys.argv[1]
    def note(sig, frame):
        with open(log, "a") as handle:
            handle.write(signal.Signals(sig).name + "\\n")
        sys.exit(0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, note)
    open(log, "a").close()
    time.sleep(300)
    """
)


@pytest.fixture(autouse=True)
def own_state_dir(monkeypatch):
    """A fresh 0700 state dir per test; children inherit it through the environment."""
    path = tempfile.mkdtemp(prefix="mixvllm-identity-")
    monkeypatch.setenv("MIXVLLM_STATE_DIR", path)
    monkeypatch.delenv(MARKER_ENV, raising=False)
    return Path(path)


@pytest.fixture
def spawn():
    """Start real children (killed at the end by pid); ``marker`` puts the server marker in their env."""
    started: list[subprocess.Popen] = []

    def start(args: list[str], marker: str | None = None, **kw) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
        if marker:
            env[MARKER_ENV] = marker
        proc = subprocess.Popen(args, env=env, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _recorder(spawn, tmp_path: Path, marker: str | None = None) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"signals-{len(list(tmp_path.iterdir()))}.txt"
    proc = spawn([sys.executable, "-c", RECORDER, str(log)], marker=marker)
    deadline = time.monotonic() + 30
    while not log.exists():  # handlers are installed before the file appears
        assert proc.poll() is None and time.monotonic() < deadline, "recorder child did not start"
        time.sleep(0.05)
    return proc, log


def _record(name: str, pid: int, stamp: float | None, marker: str | None, port: int = 0) -> registry.ServerRecord:
    return registry.ServerRecord(
        name=name, backend="vllm", model="m", served_model_name="m", host="127.0.0.1", port=port,
        base_url=f"http://127.0.0.1:{port}", pid=pid, create_time=stamp, marker=marker,
    )


def _step_psutil_clock(monkeypatch, seconds: float) -> None:
    """Move psutil's boot time as a wall-clock step of ``seconds`` does."""
    real = psutil._pslinux.boot_time()
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: real + seconds)
    monkeypatch.setattr(psutil, "boot_time", lambda: real + seconds)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


# -- 1. a clock step ---------------------------------------------------------------------------------


def test_a_clock_step_moves_psutils_create_time_but_not_our_identity(spawn, monkeypatch):
    server = spawn(["sleep", "300"], marker="m-clock")
    stamp = start_stamp(server.pid)
    psutil_before = psutil.Process(server.pid).create_time()
    registry.save(_record("clock-step", server.pid, stamp, "m-clock"))

    _step_psutil_clock(monkeypatch, 1.0)

    # psutil's identity moved by the step: compared to 0.01 s (as before) the server was "another process".
    assert psutil.Process(server.pid).create_time() - psutil_before == pytest.approx(1.0, abs=1e-3)
    assert start_stamp(server.pid) == stamp
    assert process_matches(server.pid, stamp) is not None
    record = registry.get("clock-step")
    assert record.process_alive() and not record.is_dead()
    assert "clock-step" not in registry.clean_dead()  # other tests may leave dead records of their own
    assert registry.get("clock-step", missing_ok=True) is not None
    assert server.poll() is None


WATCHDOG_AFTER_A_STEP = textwrap.dedent(
    """
    import sys, time
    import psutil, psutil._pslinux
    real, t0 = psutil._pslinux.boot_time(), time.monotonic()
    stepped = lambda: real + (1.0 if time.monotonic() - t0 > 0.3 else 0.0)  # the clock jumps 1 s, 0.3 s in
    psutil._pslinux.boot_time = psutil.boot_time = stepped
    from mixvllm_nb.process import watchdog
    sys.exit(watchdog.main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize("clock_step", [False, True], ids=["module", "after-a-clock-step"])
def test_the_watchdog_leaves_a_live_owners_server_alone_and_stops_it_once_the_owner_dies(spawn, tmp_path, clock_step):
    owner = spawn(["sleep", "300"])
    server, signals = _recorder(spawn, tmp_path, marker="m-watch")
    registry.save(_record("watched", server.pid, start_stamp(server.pid), "m-watch"))
    args = ["--owner", f"{owner.pid}:{start_stamp(owner.pid)}", "--server", f"{server.pid}:{start_stamp(server.pid)}",
            "--name", "watched", "--interval", "0.1"]
    command = ["-c", WATCHDOG_AFTER_A_STEP] if clock_step else ["-m", "mixvllm_nb.process.watchdog"]
    env = {**os.environ, "MIXVLLM_WATCHED_MARKER": "m-watch", "PYTHONPATH": str(ROOT)}
    watchdog = subprocess.Popen([sys.executable, *command, *args], env=env, stdin=subprocess.DEVNULL)
    try:
        time.sleep(3)  # 30 polls, most of them after the step
        assert watchdog.poll() is None, "the watchdog left while owner and server were alive"
        assert server.poll() is None and signals.read_text() == "", "the watchdog signalled a live owner's server"
        assert registry.get("watched", missing_ok=True) is not None

        owner.kill()  # now it must act: the server goes, and so does its record
        owner.wait()
        assert watchdog.wait(timeout=20) == 0
        assert server.wait(timeout=5) is not None
        assert "SIGTERM" in signals.read_text()
        assert registry.get("watched", missing_ok=True) is None
    finally:
        if watchdog.poll() is None:
            watchdog.kill()
            watchdog.wait()


# -- 2. the marker before any signal -------------------------------------------------------------------


@pytest.mark.parametrize("stamp", ["none", "its-own"])
def test_a_record_pointing_at_an_unrelated_process_never_gets_it_signalled(spawn, tmp_path, stamp):
    stranger, signals = _recorder(spawn, tmp_path)  # no marker: someone else's program on a reused pid
    record = _record("reused", stranger.pid, None if stamp == "none" else start_stamp(stranger.pid), "m-gone")

    report = stop_processes(psutil.Process(stranger.pid), "m-gone", grace=1, kill_wait=1)
    assert report.processes == [] and report.foreign == [stranger.pid]
    assert "not this server's" in report.summary()

    registry.save(record)
    assert registry.get("reused").is_dead()
    assert "reused" in registry.clean_dead()  # (other tests may leave dead records of their own)

    registry.save(record)
    stopped = stop_record(registry.get("reused"), grace=1)
    assert stopped.foreign == [stranger.pid] and stopped.leftover == []
    assert registry.get("reused", missing_ok=True) is None

    time.sleep(0.3)
    assert stranger.poll() is None and signals.read_text() == ""


def test_a_descendant_with_another_servers_marker_is_not_signalled(spawn, tmp_path):
    other_log = tmp_path / "other.txt"
    code = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        env = dict(os.environ, {MARKER_ENV}="m-other")
        child = subprocess.Popen([sys.executable, "-c", {RECORDER!r}, {str(other_log)!r}], env=env)
        print(child.pid, flush=True)
        time.sleep(300)
        """
    )
    root = spawn([sys.executable, "-c", code], marker="m-root", stdout=subprocess.PIPE, text=True)
    other = int(root.stdout.readline())
    deadline = time.monotonic() + 30
    while not other_log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        report = stop_processes(psutil.Process(root.pid), "m-root", grace=2, kill_wait=2)
        assert [info.pid for info in report.processes] == [root.pid]
        assert root.wait(timeout=5) is not None
        assert _alive(other) and other_log.read_text() == ""
    finally:
        if _alive(other):
            os.kill(other, signal.SIGKILL)


# -- 3. the state dir is ours and private ------------------------------------------------------------------


def test_a_state_dir_others_can_open_is_refused_with_one_line(monkeypatch, tmp_path):
    shared = tmp_path / "shared-state"
    shared.mkdir()
    shared.chmod(0o755)
    monkeypatch.setenv("MIXVLLM_STATE_DIR", str(shared))
    for call in (registry.state_dir, registry.list_records, lambda: registry.get("x", missing_ok=True)):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        assert str(shared) in message and "0755" in message and "0700" in message
    assert not (shared / "servers").exists()  # refused before anything was written into it

    shared.chmod(0o700)
    (shared / "servers").mkdir(mode=0o777)
    (shared / "servers").chmod(0o775)
    with pytest.raises(ConfigError, match=r"servers: owned by uid \d+ with mode 0775"):
        registry.list_records()


def test_a_state_dir_of_another_user_is_refused(monkeypatch, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(theirs, 65534, 65534)  # nobody
        owner = 65534
    else:
        theirs, owner = Path("/"), 0  # root's, never ours
    monkeypatch.setenv("MIXVLLM_STATE_DIR", str(theirs))
    with pytest.raises(MixVLLMError, match=rf"owned by uid {owner} .*must be owned by you \(uid {os.getuid()}\)"):
        registry.state_dir()


def test_a_missing_state_dir_is_created_0700_whatever_the_umask(monkeypatch, tmp_path):
    fresh = tmp_path / "a" / "state"
    monkeypatch.setenv("MIXVLLM_STATE_DIR", str(fresh))
    old = os.umask(0o002)
    try:
        servers = registry.servers_dir()
    finally:
        os.umask(old)
    assert (fresh.stat().st_mode & 0o777, servers.stat().st_mode & 0o777) == (0o700, 0o700)


# -- 4. update cannot resurrect a removed record ----------------------------------------------------------------

UPDATER = textwrap.dedent(
    """
    import os, sys
    from mixvllm_nb.process import registry
    stop, count = sys.argv[1], 0
    while not os.path.exists(stop):
        registry.update("racy", state="ready", exit_code=count)
        count += 1
    print(count)
    """
)


def test_a_record_removed_during_updates_never_comes_back(tmp_path):
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    updaters = [subprocess.Popen([sys.executable, "-c", UPDATER, str(stop)], env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    resurrected = 0
    try:
        time.sleep(1.0)  # both updaters are looping
        for i in range(150):
            registry.save(_record("racy", 1, None, None))
            time.sleep(0.002 * (i % 5))
            registry.remove("racy")
            time.sleep(0.01)  # an update that read the record before the removal has written by now
            resurrected += registry.get("racy", missing_ok=True) is not None
            registry.remove("racy")
    finally:
        stop.touch()
        counts = [int(p.communicate(timeout=30)[0]) for p in updaters]
    assert min(counts) > 100, f"the updaters barely ran ({counts}): the race was not exercised"
    assert resurrected == 0, f"a removed record came back {resurrected} times out of 150"


# -- 5. validate_name ---------------------------------------------------------------------------------------------


def test_an_invalid_name_is_a_config_error_and_still_a_value_error():
    with pytest.raises(ConfigError) as info:
        registry.validate_name("../etc")
    assert isinstance(info.value, ValueError)
    assert str(info.value) == (
        "invalid server name '../etc': use 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)"
    )


# -- 6. stopping from a record alone --------------------------------------------------------------------------------

SERVER_TREE = textwrap.dedent(
    """
    import os, signal, socket, subprocess, sys, time
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    child = subprocess.Popen(["sleep", "300"])
    stubborn = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
    # An orphan: its parent exits at once, so it is re-parented and found only by the marker.
    orphan = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!"], stdout=subprocess.PIPE, text=True)
    orphan_pid = int(orphan.stdout.readline())
    orphan.wait()
    print(sock.getsockname()[1], child.pid, stubborn.pid, orphan_pid, flush=True)
    time.sleep(300)
    """
)


def test_stop_record_stops_a_marked_tree_frees_its_port_and_forgets_it(spawn):
    root = spawn([sys.executable, "-c", SERVER_TREE], marker="m-tree", stdout=subprocess.PIPE, text=True)
    port, *others = map(int, root.stdout.readline().split())
    time.sleep(0.5)  # the stubborn child has set SIG_IGN
    assert not port_is_free("127.0.0.1", port)
    registry.save(_record("tree", root.pid, start_stamp(root.pid), "m-tree", port=port))

    started = time.monotonic()
    report = stop_record(registry.get("tree"), grace=2)
    took = time.monotonic() - started

    assert report.clean, report.summary()
    assert {info.pid for info in report.processes} == {root.pid, *others}
    outcomes = {info.pid: info.outcome for info in report.processes}
    assert outcomes[others[1]] == "killed"  # ignored SIGTERM: escalated after the grace period
    assert _wait_gone([root.pid, *others], 5) == []
    assert port_is_free("127.0.0.1", port)
    assert registry.get("tree", missing_ok=True) is None
    assert took < 2 + 5 + 10  # grace + kill wait + a busy machine's slack


def test_stop_record_keeps_a_record_that_now_names_another_server(spawn):
    first = spawn(["sleep", "300"], marker="m-one")
    record = _record("taken", first.pid, start_stamp(first.pid), "m-one")
    second = spawn(["sleep", "300"], marker="m-two")
    registry.save(_record("taken", second.pid, start_stamp(second.pid), "m-two"))  # the name was reused meanwhile

    stop_record(record, grace=2)

    assert first.wait(timeout=5) is not None
    assert second.poll() is None
    assert registry.get("taken").marker == "m-two"


def test_a_port_held_by_someone_else_is_reported_without_waiting(spawn):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        gone = spawn(["true"])
        gone.wait()
        started = time.monotonic()
        report = stop_record(_record("ghost", gone.pid, 1.0, "m-ghost", port=port), grace=1)
        assert time.monotonic() - started < 5
    assert report.processes == [] and not report.port_free
    assert "port free: False" in report.summary() and "\n" not in report.summary()

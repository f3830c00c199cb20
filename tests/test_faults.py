"""Faults to survive, with real processes: a Jupyter server SIGKILLed, kernels SIGKILLed over and over, an
engine SIGKILLed mid-stream behind the proxy, a wall-clock step under a running server's heartbeat.

The engine is llama.cpp (the embedded SmolLM2, ready in about a second) wherever the fault is not vLLM's
own; the clock step uses the session's vLLM server, whose engine children are what the heartbeat watches.
Nothing is mocked but the clock step (psutil's boot time is moved, as in test_process_identity: stepping
the real clock would disturb every other process on the machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import psutil
import psutil._pslinux
import pytest
from kernel_helpers import Kernel
from test_server_support import JupyterProcess

from conftest import marked_alive
from mixvllm_nb.models import DEFAULT_MODEL_ID
from mixvllm_nb.process import logs, registry
from mixvllm_nb.process.ownership import orphaned
from mixvllm_nb.process.ports import port_is_free
from mixvllm_nb.process.stopping import stop_record
from mixvllm_nb.process.tree import process_matches
from mixvllm_nb.process.view import server_view

pytestmark = pytest.mark.vllm  # a real engine in every test

WATCHDOG_MODULE = "mixvllm_nb.process.watchdog"


def _wait(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _watchdogs_of(owner_pid: int) -> list[int]:
    """Return the pids of the watchdogs ``owner_pid`` started (its children running the watchdog module)."""
    children = {child.pid for child in psutil.Process(owner_pid).children()}
    return [p.pid for p in psutil.process_iter(["cmdline"])  # process_iter: a child that just left is skipped
            if p.pid in children and WATCHDOG_MODULE in (p.info["cmdline"] or [])]


def _leftovers(records: list[registry.ServerRecord], watchdogs: list[int]) -> dict[str, list]:
    """Return what is still there of these servers: processes, watchdogs, held ports, records."""
    return {
        "server processes": [r.pid for r in records if process_matches(r.pid, r.create_time)],
        "marked processes": [pid for r in records for pid in marked_alive(r.marker)],
        "watchdogs": [pid for pid in watchdogs if _alive(pid)],
        "ports held": sorted({r.port for r in records if not port_is_free(r.host, r.port)}),
        "records": sorted({r.name for r in records if _live_record(r)}),
    }


def _live_record(record: registry.ServerRecord) -> bool:
    """True when this server's record is left and does not read as ended (an ended one may stay, saying so)."""
    now = registry.get(record.name, missing_ok=True)
    return now is not None and now.marker == record.marker and not server_view(now)["dead"]


def _cleanup(*names: str) -> None:
    for name in names:
        record = registry.get(name, missing_ok=True)
        if record is not None:
            stop_record(record, grace=5)


# -- a Jupyter server SIGKILLed -----------------------------------------------------------------------------


@contextmanager
def _jupyter(tmp_path: Path) -> Iterator[JupyterProcess]:
    root = tmp_path / "root"
    root.mkdir()
    jupyter = JupyterProcess(root, tmp_path).start()
    try:
        yield jupyter
    finally:
        jupyter.stop()


def _rest(jupyter: JupyterProcess) -> httpx.Client:
    return httpx.Client(base_url=f"{jupyter.url}mixvllm/api/", timeout=60,
                        headers={"Authorization": f"token {jupyter.token}"})


def _start_over_rest(rest: httpx.Client, body: dict, *, detach: bool = False) -> dict:
    """POST a config and wait until its server reads ready; return its REST view."""
    name = body["server"]["name"]
    answer = rest.post("servers", params={"detach": str(detach).lower()}, json=body)
    assert answer.status_code == 202, answer.text
    views: list[dict] = []

    def ready() -> bool:
        views.append(rest.get(f"servers/{name}").json())
        assert views[-1]["state"] in ("starting", "ready"), views[-1]
        return views[-1]["state"] == "ready"

    assert _wait(ready, 90, 0.2), views[-1]
    return views[-1]


def test_a_sigkilled_jupyter_server_takes_its_servers_along_but_not_a_detached_one(tmp_path):
    light = {"backend": "llamacpp", "heartbeat_interval": 0.5}
    with _jupyter(tmp_path) as jupyter, _rest(jupyter) as rest:
        try:
            _start_over_rest(rest, {**light, "server": {"name": "jp-owned"}})
            # Another config: with the same one, the detached request reuses the owned server (see below).
            _start_over_rest(rest, {**light, "inference": {"max_model_len": 1024}, "server": {"name": "jp-detached"}},
                             detach=True)
            owned, detached = registry.get("jp-owned"), registry.get("jp-detached")
            assert owned.owner["pid"] == detached.owner["pid"] == jupyter.process.pid
            watchdogs = _watchdogs_of(jupyter.process.pid)
            assert len(watchdogs) == 1, "one watchdog: for the owned server, none for the detached one"

            assert not orphaned(owned) and not orphaned(detached)
            jupyter.process.send_signal(signal.SIGKILL)  # no stop_extension, no atexit
            jupyter.process.wait()
            killed_at = time.monotonic()
            # At once, before the watchdog has acted: the owner's identity says the owned one is doomed.
            assert orphaned(owned) and not orphaned(detached)
            gone = _wait(lambda: not any(_leftovers([owned], watchdogs).values()), 10)
            took = time.monotonic() - killed_at
            print(f"\nowned server gone {took:.1f} s after the Jupyter server's SIGKILL")
            assert gone, f"10 s after the SIGKILL: {_leftovers([owned], watchdogs)}"

            assert registry.get("jp-detached").process_alive()
            models = httpx.get(f"{detached.base_url}/v1/models", timeout=10,
                               headers={"Authorization": f"Bearer {detached.api_key}"})
            assert models.status_code == 200 and models.json()["data"][0]["id"] == DEFAULT_MODEL_ID
            report = stop_record(registry.get("jp-detached"), grace=10)
            assert report.clean, report.summary()
            assert not any(_leftovers([detached], []).values())
        finally:
            _cleanup("jp-owned", "jp-detached")


def test_asking_for_a_detached_server_never_reuses_one_that_dies_with_its_owner():
    from mixvllm_nb.api import serve
    from mixvllm_nb.config import config_from_dict

    light = {"backend": "llamacpp"}
    try:
        owned = serve(config_from_dict({**light, "server": {"name": "owned-first"}}), owner_kind="kernel")
        asked = serve(config_from_dict({**light, "server": {"name": "detached-second"}}), detach=True)
        assert owned.outcome == "Launched"
        # Reusing is fine only of a server that is detached as well: the owned one stops with its owner.
        assert registry.get(asked.server.name).detached, asked.describe()
    finally:
        _cleanup("owned-first", "detached-second")


OWNER = """
import json, sys, time
from mixvllm_nb.api import serve
from mixvllm_nb.config import config_from_dict
result = serve(config_from_dict(json.loads(sys.argv[1])), owner_kind="kernel")
print(json.dumps({"pid": result.server.pid}), flush=True)
time.sleep(600)
"""


def _owner(config: dict) -> subprocess.Popen:
    """Start a Python process that serves ``config`` and waits; return it once its server is ready."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, json.dumps(config)], stdout=subprocess.PIPE, text=True)
    line = owner.stdout.readline()
    assert line, f"the owner process ended before its server was ready (exit code {owner.wait()})"
    return owner


def test_serving_right_after_the_owner_was_sigkilled_gets_a_server_that_stays():
    from mixvllm_nb.api import serve
    from mixvllm_nb.config import config_from_dict

    owner = _owner({"backend": "llamacpp", "server": {"name": "orphan-race"}})
    try:
        first = registry.get("orphan-race")
        owner.kill()  # SIGKILL, as the OOM killer or a kernel's forced restart
        owner.wait()
        again = serve(config_from_dict({"backend": "llamacpp", "server": {"name": "orphan-race"}}), owner_kind="kernel")
        time.sleep(3)  # the first server's watchdog has stopped it by now
        now = registry.get("orphan-race", missing_ok=True)
        assert now is not None and now.marker != first.marker and now.process_alive(), again.describe()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        _cleanup("orphan-race")


# -- 20 kernels SIGKILLed ------------------------------------------------------------------------------------

CYCLES = 20


def test_twenty_kernels_sigkilled_after_serving_leave_nothing(capsys):
    kernel = Kernel()
    records: list[registry.ServerRecord] = []
    watchdogs: list[int] = []
    durations: list[float] = []
    started = time.monotonic()
    try:
        for cycle in range(CYCLES):
            began = time.monotonic()
            if cycle:
                kernel.manager.restart_kernel(now=True)  # the same manager and ports: a fresh kernel process
                kernel.client.wait_for_ready(timeout=60)
            cell = kernel.run("%load_ext mixvllm_nb\n%vllm_serve --backend llamacpp --name cycle", timeout=120)
            assert cell.error is None, (cycle, cell.error)
            assert "Launched cycle" in cell.stdout, (cycle, cell.stdout)
            record = registry.get("cycle")
            # This kernel's own server, not the one of the kernel killed just before.
            assert record.owner["pid"] == kernel.pid and record.state == "ready", (cycle, record)
            records.append(record)
            watchdogs += _watchdogs_of(kernel.pid)
            assert len(watchdogs) == cycle + 1, f"cycle {cycle}: one watchdog per served kernel"
            earlier = _leftovers(records[:-1], watchdogs[:-1])  # the last kernel's server went with it
            assert not any(earlier.values()), (cycle, earlier)
            os.kill(kernel.pid, signal.SIGKILL)
            durations.append(time.monotonic() - began)
        killed_at = time.monotonic()
        assert _wait(lambda: not any(_leftovers(records, watchdogs).values()), 10), _leftovers(records, watchdogs)
        last_gone = time.monotonic() - killed_at
    finally:
        kernel.client.stop_channels()
        kernel.manager.shutdown_kernel(now=True)
        _cleanup("cycle")
    assert len({r.marker for r in records}) == CYCLES  # twenty servers, each launched anew
    with capsys.disabled():
        print(f"\n{CYCLES} cycles in {time.monotonic() - started:.0f} s (per cycle: median "
              f"{sorted(durations)[CYCLES // 2]:.1f} s, max {max(durations):.1f} s); last server gone "
              f"{last_gone:.1f} s after its kernel's SIGKILL")


# -- the engine SIGKILLed mid-stream ---------------------------------------------------------------------------

COUNT = [{"role": "user", "content": "Count from one to five hundred in words, one number per line."}]


@pytest.fixture(scope="module")
def proxy_jupyter(tmp_path_factory) -> Iterator[JupyterProcess]:
    with _jupyter(tmp_path_factory.mktemp("faults-jupyter")) as jupyter:
        yield jupyter


def _stream_and_kill(client: openai.OpenAI, model: str, kill: Callable[[], None], **extra) -> tuple[list[str], str]:
    """Stream a long chat, ``kill()`` after 5 pieces; return the pieces and how the stream ended (bounded)."""
    pieces: list[str] = []
    killed_at = None
    ending = "clean end"
    stream = client.chat.completions.create(model=model, messages=COUNT, max_tokens=1500, temperature=0, stream=True,
                                            **extra)
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if len(pieces) == 5 and killed_at is None:
                kill()
                killed_at = time.monotonic()
    except openai.APIError as exc:  # an OpenAI-shaped error (an error event, or the status of one): a right end
        ending = f"{type(exc).__name__}: {exc}"
    assert killed_at is not None, f"the stream ended before 5 pieces: {pieces}"
    ended_in = time.monotonic() - killed_at
    print(f"\nstream ended {ended_in:.2f} s after the kill, {len(pieces)} pieces: {ending}")
    # The client's own timeout is 30 s: an end within 15 s is the proxy's doing, not the client giving up.
    assert ended_in < 15, f"the stream hung {ended_in:.1f} s after the engine died"
    return pieces, ending


def test_an_engine_killed_mid_stream_ends_the_stream_and_reads_crashed_with_its_log(proxy_jupyter):
    name = "midstream"
    jupyter = proxy_jupyter
    with _rest(jupyter) as rest:
        try:
            _start_over_rest(rest, {"backend": "llamacpp", "heartbeat_interval": 0.5, "server": {"name": name}})
            record = registry.get(name)
            client = openai.OpenAI(base_url=jupyter.proxy_v1(name), api_key=jupyter.token, max_retries=0,
                                   timeout=30)
            _stream_and_kill(client, DEFAULT_MODEL_ID, lambda: os.kill(record.pid, signal.SIGKILL))

            views: list[dict] = []
            assert _wait(lambda: views.append(rest.get(f"servers/{name}").json()) or views[-1]["state"] == "crashed",
                         10), views[-1]
            view = views[-1]
            last_line = logs.tail(record.log_path, 1).strip()
            assert view["error"].startswith("killed by SIGKILL"), view["error"]
            assert last_line and view["error"].endswith(last_line), (view["error"], last_line)
            assert view["exit_code"] == -signal.SIGKILL and view["dead"]
            assert marked_alive(record.marker) == [] and port_is_free(record.host, record.port)

            # The proxy now says so at once, OpenAI-shaped, instead of trying the dead port.
            with pytest.raises(openai.APIStatusError) as refused:
                client.chat.completions.create(model=DEFAULT_MODEL_ID, messages=COUNT, max_tokens=5)
            assert refused.value.status_code == 502 and "crashed" in refused.value.message

            kernel = Kernel()
            try:
                cell = kernel.run(f"%load_ext mixvllm_nb\n%vllm_logs {name} -n 5")
            finally:
                kernel.shutdown()
            assert cell.error is None, cell.error
            assert cell.stdout.strip().splitlines()[-1] == last_line
        finally:
            _cleanup(name)


def test_vllm_engine_core_killed_mid_stream_ends_the_stream_and_reads_crashed(proxy_jupyter):
    # vLLM's own fault: its API server outlives a dead EngineCore, so the stream's upstream stays open.
    from mixvllm_nb import VLLMServer

    server = VLLMServer(name="core-killed", heartbeat_interval=0.5, gpu_memory_utilization=0.1).start()
    try:
        core = [p for p in psutil.Process(server.pid).children(recursive=True)
                if p.cmdline()[:1] == ["VLLM::EngineCore"]]
        assert core, "no VLLM::EngineCore under the API server"
        client = openai.OpenAI(base_url=proxy_jupyter.proxy_v1(server.name), api_key=proxy_jupyter.token,
                               max_retries=0, timeout=30)
        _stream_and_kill(client, server.served_model_name, lambda: core[0].send_signal(signal.SIGKILL),
                         extra_body={"ignore_eos": True})
        assert _wait(lambda: server.state == "crashed", 10), (server.state, server.error)
        status = server.status()
        assert status["state"] == "crashed" and status["error"].startswith(f"engine process(es) [{core[0].pid}"), (
            status["error"])
        assert _wait(lambda: not marked_alive(server.record.marker), 20), marked_alive(server.record.marker)
        with _rest(proxy_jupyter) as rest:
            assert rest.get(f"servers/{server.name}").json()["state"] == "crashed"
    finally:
        report = server.stop()
        assert report.clean, report.summary()


def test_a_crashed_server_says_why_in_every_process_not_only_its_owner():
    from mixvllm_nb.api import get_server

    owner = _owner({"backend": "llamacpp", "heartbeat_interval": 0.5, "server": {"name": "crashed-elsewhere"}})
    try:
        record = registry.get("crashed-elsewhere")
        os.kill(record.pid, signal.SIGKILL)
        assert _wait(lambda: registry.get("crashed-elsewhere").state == "crashed", 10)
        status = get_server("crashed-elsewhere").status()
        assert status["state"] == "crashed"
        assert status["error"].startswith("killed by SIGKILL"), status
    finally:
        owner.kill()
        owner.wait()
        _cleanup("crashed-elsewhere")


# -- a wall-clock step under a running server ---------------------------------------------------------------


def test_a_clock_step_neither_stops_nor_reports_dead_a_running_servers_heartbeat(vllm_server, monkeypatch):
    # test_process_identity covers the watchdog, the registry and clean_dead across a step; the heartbeat of a
    # running server, which tells vLLM's engine children alive by their identity, is covered here.
    assert vllm_server.engine_pids, "the heartbeat watches no engine process: nothing to check"
    engine = next(iter(vllm_server.engine_pids))
    time.sleep(vllm_server.config.heartbeat_interval + 0.5)  # a heartbeat before the step, one that knew the old time
    before = psutil.Process(engine).create_time()
    real = psutil._pslinux.boot_time()
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: real + 1.0)
    monkeypatch.setattr(psutil, "boot_time", lambda: real + 1.0)
    # The step is real for psutil: compared to 0.01 s, every engine process would now be "another one".
    assert psutil.Process(engine).create_time() - before == pytest.approx(1.0, abs=1e-3)
    time.sleep(3 * vllm_server.config.heartbeat_interval + 1)  # three heartbeats after the step
    heartbeat = f"mixvllm-heartbeat-{vllm_server.name}"
    assert any(t.name == heartbeat for t in threading.enumerate()), "the heartbeat stopped: nobody would notice a crash"
    assert vllm_server.state == "ready", vllm_server.error
    assert all(_alive(pid) for pid in vllm_server.engine_pids)
    view = server_view(registry.get(vllm_server.name), vllm_server)
    assert (view["state"], view["dead"], view["error"]) == ("ready", False, "")
    assert registry.get(vllm_server.name).state == "ready"

"""Servers on a real Ray cluster: a local one (``ray start --head``, token authentication on) started here.

The embedded model is served as a Ray job from the magic; it answers through the Jupyter proxy and REST
shows it, its log follows (`--follow` until it stops), the panel watches and stops it, and nothing is left: the job stopped, no vLLM
process, the port closed. A job started over REST on a Python without vLLM reads as its cause
(notebooks/10_ray_cluster.ipynb serves and stops one from the magics too, in the suite's nbval run). Errors (unreachable, no token, a wrong token, vLLM missing on the cluster,
no node with the GPUs asked for) are one line each. The one stand-in: a worker node that declares a GPU
to Ray (this machine has none; Ray schedules by what nodes declare), for the "no node has N GPUs" check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError
from test_server_support import JupyterProcess

from mixvllm_nb.process import registry
from mixvllm_nb.process.ray_jobs import RayJob, forget, token_file
from mixvllm_nb.process.tree import MARKER_ENV

pytestmark = pytest.mark.vllm  # a real Ray cluster, and real vLLM jobs on it

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def cluster():
    from mixvllm_nb.ray_cluster import start_local_cluster

    started = time.monotonic()
    local = start_local_cluster(num_cpus=2)
    print(f"\nRay head up in {time.monotonic() - started:.1f} s at {local.address}")
    try:
        yield local
    finally:
        marker = local.marker
        local.stop()
        left = [p.pid for p in psutil.process_iter() if _carries(p, marker)]
        assert left == [], f"Ray processes left after the cluster stopped: {left}"


def _carries(process: psutil.Process, marker: str) -> bool:
    try:
        return process.environ().get(MARKER_ENV) == marker
    except psutil.Error:
        return False


def _marked(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if _carries(p, marker)]


def _job_state(address: str, job_id: str) -> str:
    return RayJob(address, job_id).status(fresh=True)


def _ask_proxy(jupyter: JupyterProcess, name: str) -> str:
    body = json.dumps({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16, "temperature": 0})
    request = urllib.request.Request(f"{jupyter.proxy_v1(name)}/chat/completions", data=body.encode(),
                                     headers={"Authorization": f"token {jupyter.token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


def _rest(jupyter: JupyterProcess, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"{jupyter.url}mixvllm/api/{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {jupyter.token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _port_answers(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_magic_serves_on_the_cluster_the_proxy_answers_and_the_panel_stops_it_leaving_nothing(
        ip, cluster, jupyter, capsys):
    from mixvllm_nb.panel import ControlPanel

    ip.run_line_magic("vllm_serve", f"--cluster {cluster.address} --name on-ray --temperature 0 --max-tokens 16")
    said = capsys.readouterr().out
    assert "Launched on-ray on vLLM as Ray job mixvllm-on-ray-" in said, said
    record = registry.get("on-ray")
    job_id, host, port = record.cluster["job_id"], record.host, record.port
    assert record.cluster["address"] == cluster.address and record.pid is None
    assert _job_state(cluster.address, job_id) == "RUNNING"  # Ray's own word, asked apart from mixvllm_nb
    assert host == "127.0.0.1"  # the node's address on the route to the head: loopback for a local cluster

    # The Ray token is in none of what mixvllm_nb keeps or shows; the API key is not on the job's command line.
    token = token_file(cluster.address).read_text().strip()
    record_file = registry.servers_dir() / "on-ray.json"
    assert token not in record_file.read_text()
    assert token not in Path(record.log_path).read_text()
    from mixvllm_nb.api import list_servers

    assert token not in json.dumps(list_servers(details=True), default=str)
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(cluster.address, headers={"Authorization": f"Bearer {token}"}).get_job_info(job_id)
    assert record.api_key not in info.entrypoint and "vllm.entrypoints.openai.api_server" in info.entrypoint
    assert "RAY_AUTH_TOKEN" not in (info.runtime_env or {}).get("env_vars", {})

    # Every front shows it as ready; it answers through Jupyter's proxy as a local server does.
    from mixvllm_nb.process.view import current_state

    ip.run_line_magic("vllm_status", "on-ray")
    assert str(current_state("on-ray")) == "ready"
    ip.run_line_magic("vllm_bench", "on-ray --levels 1 --max-tokens 8")  # the bench runs on it unchanged
    assert "Paris" in _ask_proxy(jupyter, "on-ray")
    code, view = _rest(jupyter, "servers/on-ray")
    assert code == 200 and view["state"] == "ready" and view["cluster"]["job_id"] == job_id

    # Its log comes from Ray's job log: the start-up and the request just served.
    ip.run_line_magic("vllm_logs", "on-ray --lines 400")
    shown = capsys.readouterr().out
    assert "MIXVLLM_SERVING 127.0.0.1" in shown and "Application startup complete" in shown

    # `--follow` streams the job's log as Ray gives it, until the server ends (below, by the panel's Stop).
    follower = threading.Thread(target=ip.run_line_magic, args=("vllm_logs", "on-ray -n 1 --follow"), daemon=True)
    follower.start()
    assert "Paris" in _ask_proxy(jupyter, "on-ray")

    # Memory: Ray's processes and the vLLM job together, what the CI machine must hold beside the suite.
    engine = _marked(record.marker or "")
    assert engine, "the job's vLLM processes carry the server's marker"
    ray_side = _marked(cluster.marker)
    total = sum(p.memory_info().rss for p in engine + ray_side if p.is_running())
    print(f"\nRay head + one CPU vLLM job: {total / 2**30:.2f} GiB RSS "
          f"({len(ray_side)} Ray processes, {len(engine)} vLLM processes)")
    assert total < 12 * 2**30

    # The panel watches it (Ray job, not a pid) and its Stop ends the job.
    panel = ControlPanel(interval=0.5)
    try:
        panel.selector.value = "on-ray"
        deadline = time.monotonic() + 30
        while "Ray job" not in panel.monitor.summary.value and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"Ray job {job_id}" in panel.monitor.summary.value
        panel.launch.stop_button.click()
        deadline = time.monotonic() + 90
        while registry.get("on-ray", missing_ok=True) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert panel.errors.message == "", panel.errors.message
    finally:
        panel.close()
    assert registry.get("on-ray", missing_ok=True) is None
    follower.join(timeout=30)
    assert not follower.is_alive(), "--follow went on after the server stopped"
    followed = capsys.readouterr().out.split("\n", 1)[1]  # what came after the one line of tail
    assert "POST /v1/chat/completions" in followed and "[on-ray is " in followed, followed
    assert _job_state(cluster.address, job_id) == "STOPPED"
    assert not _port_answers(host, port)
    deadline = time.monotonic() + 30
    while (left := [p for p in engine if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []


def test_rest_starts_a_job_on_the_cluster_and_a_failed_start_reads_as_its_cause(cluster, jupyter):
    # vLLM missing on the cluster: a Python without it (the venv's base interpreter). The job starts (its entry
    # script runs), vLLM does not.
    bare = sys._base_executable
    assert subprocess.run([bare, "-c", "import vllm"], capture_output=True).returncode != 0, "needs a Python sans vLLM"
    body = {"cluster": {"address": cluster.address, "python": bare}, "server": {"name": "rest-no-vllm"}}
    code, started = _rest(jupyter, "servers", "POST", body)
    assert code == 202, started
    job_id = started["cluster"]["job_id"]
    assert started["cluster"]["address"] == cluster.address and started["started_by"] == "jupyter-server"
    deadline = time.monotonic() + 120
    view: dict = {}
    while time.monotonic() < deadline:
        _, view = _rest(jupyter, "servers/rest-no-vllm")
        if view.get("state") not in ("starting", "ready"):
            break
        time.sleep(1)
    assert view["state"] == "crashed", view
    assert "vLLM is not installed in the Python that runs the server (on a Ray cluster: cluster.python" in view["error"]
    assert _job_state(cluster.address, job_id) == "FAILED"
    code, stopped = _rest(jupyter, "servers/rest-no-vllm", "DELETE")
    assert code == 200, stopped
    assert registry.get("rest-no-vllm", missing_ok=True) is None


def test_cluster_errors_are_one_line_each(ip, cluster, monkeypatch, tmp_path):
    from mixvllm_nb.process.ports import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UsageError, match=r"^cluster.address: no Ray cluster answers at http://127.0.0.1:\d+; "):
        ip.run_line_magic("vllm_cluster", nowhere)
    with pytest.raises(UsageError, match=r"cluster.address: give the URL of the cluster's job API"):
        ip.run_line_magic("vllm_serve", "--cluster 127.0.0.1:8265")

    # The token: missing, then wrong. The cluster's own token file is looked for elsewhere (Ray's processes read
    # theirs from it), and no other source has one.
    monkeypatch.setattr("mixvllm_nb.process.ray_jobs.token_file", lambda _address: tmp_path / "no-token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    try:
        forget(cluster.address)
        with pytest.raises(UsageError, match=r"asks for Ray's token and none was found: set RAY_AUTH_TOKEN"):
            ip.run_line_magic("vllm_cluster", cluster.address)
        monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
        forget(cluster.address)
        with pytest.raises(UsageError, match=r"refused the Ray token from RAY_AUTH_TOKEN: it is not this cluster's"):
            ip.run_line_magic("vllm_cluster", cluster.address)
    finally:
        monkeypatch.undo()
        forget(cluster.address)
    ip.run_line_magic("vllm_cluster", cluster.address)  # with its token again


def test_a_local_cluster_knows_its_jobs_processes_by_its_token_and_address(cluster):
    """What LocalCluster.stop sweeps when Ray was killed under a job: only processes provably of this cluster."""
    marker = f"bench{time.monotonic_ns()}"
    job_id = f"mixvllm-provenance-{marker}"
    RayJob(cluster.address, job_id).start(["python", "-c", "import time; time.sleep(600)"], env={MARKER_ENV: marker},
                                          runtime_env={}, python="python", num_gpus=0, metadata={})
    try:
        deadline = time.monotonic() + 60
        while marker not in cluster._outliving_jobs() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marker in cluster._outliving_jobs()
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 env={**os.environ, MARKER_ENV: "not-a-job-of-this-cluster"})
        try:
            assert "not-a-job-of-this-cluster" not in cluster._outliving_jobs()
        finally:
            other.kill()
    finally:
        RayJob(cluster.address, job_id).stop()
    assert marker not in cluster._outliving_jobs()


def test_no_node_with_the_gpus_asked_for_is_refused_before_anything_runs(ip, cluster, capsys):
    # Last in the module: from here on the cluster declares a GPU.
    cluster.add_worker(num_cpus=1, num_gpus=1)
    ip.run_line_magic("vllm_cluster", cluster.address)
    shown = capsys.readouterr().out
    assert "2 node(s)" in shown and "1 GPU" in shown, shown
    before = [r.name for r in registry.list_records()]
    with pytest.raises(UsageError, match=r"no node has the 2 GPUs asked for \(the most on one node: 1 on "):
        ip.run_line_magic("vllm_serve", f"--cluster {cluster.address} --name too-big --tensor-parallel-size 2")
    assert registry.get("too-big", missing_ok=True) is None and [r.name for r in registry.list_records()] == before


def test_a_dead_owners_cluster_server_is_stopped_through_ray_by_its_watchdog(cluster):
    """The owner (a real process) is SIGKILLed: its watchdog stops the job through Ray and forgets the record.

    The job is a sleeping Python, not vLLM (what is checked is the watchdog's path, not the engine's).
    """
    import signal

    from mixvllm_nb.process.ownership import owner_info
    from mixvllm_nb.process.tree import start_stamp

    job_id = f"mixvllm-watched-{time.monotonic_ns()}"
    RayJob(cluster.address, job_id).start(["python", "-c", "import time; time.sleep(600)"], env={}, runtime_env={},
                                          python="python", num_gpus=0, metadata={})
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        record = registry.ServerRecord(name="watched-on-ray", backend="vllm", model="m", served_model_name="m",
                                       host="127.0.0.1", port=0, base_url="", owner=owner_info("python"),
                                       cluster={"address": cluster.address, "job_id": job_id})
        record.owner["pid"] = owner.pid
        registry.save(record)
        deadline = time.monotonic() + 60
        while _job_state(cluster.address, job_id) != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _job_state(cluster.address, job_id) == "RUNNING"
        # The watchdog as ownership.start_watchdog starts it for a cluster server, with that process as the owner.
        watchdog = subprocess.Popen([sys.executable, "-m", "mixvllm_nb.process.watchdog", "--owner",
                                     f"{owner.pid}:{start_stamp(owner.pid)}", "--job", job_id,
                                     "--name", "watched-on-ray"])
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        watchdog.wait(timeout=90)
        assert _job_state(cluster.address, job_id) == "STOPPED"
        assert registry.get("watched-on-ray", missing_ok=True) is None
    finally:
        if owner.poll() is None:
            owner.kill()
        RayJob(cluster.address, job_id).stop()
        registry.remove("watched-on-ray")

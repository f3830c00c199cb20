"""Ray clusters from the notebook: start a local one (token authentication on), list a cluster's nodes, plan a model.

A server goes to a cluster with ``cluster.address`` (``%vllm_serve --cluster http://HEAD:8265``); this
module is the rest: :func:`start_local_cluster` runs ``ray start --head`` (and worker nodes) on this
machine for learning and tests, :func:`cluster_nodes` is what ``%vllm_cluster`` shows, and
:func:`plan_on_cluster` says how a model splits over the cluster's GPUs (tensor parallel within a node,
pipeline parallel across nodes).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from .errors import ClusterError, MixVLLMError
from .process import registry
from .process.launchers import inherited_env
from .process.ports import free_port
from .process.ray_jobs import forget, jobs_client, nodes, token_file
from .process.tree import MARKER_ENV, launch_env, stop_processes


@dataclass
class LocalCluster:
    """A Ray cluster on this machine, started by :func:`start_local_cluster`; :meth:`stop` ends all of it."""

    address: str  # the job API (dashboard), what cluster.address takes
    gcs_address: str  # what `ray start --address` of another node takes
    marker: str = field(repr=False)
    log_dir: Path = field(repr=False)
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def add_worker(self, num_cpus: int = 1, num_gpus: int = 0, timeout: float = 90.0) -> None:
        """Start one more node of the cluster on this machine (``ray start --address``).

        ``num_gpus`` is what the node declares to Ray (Ray schedules by declared resources).
        """
        expected = len(nodes(self.address)) + 1
        self.processes.append(_ray_start(["--address", self.gcs_address, "--num-cpus", str(num_cpus),
                                          "--num-gpus", str(num_gpus)],
                                         self.marker, self.log_dir / f"worker-{expected}.log", self.address))
        _wait_for_nodes(self, expected, timeout)

    def stop(self) -> int:
        """Stop the servers running on the cluster, then every process of it (those carrying its marker).

        Return how many processes were stopped.
        """
        from .api import stop_server

        for record in registry.list_records():
            if record.cluster.get("address") == self.address:
                try:
                    stop_server(record.name, force=True)  # a job of a cluster that is going away goes first
                except MixVLLMError:  # gone meanwhile; what outlives Ray is swept below
                    pass
        report = stop_processes(None, self.marker, grace=15)
        for process in self.processes:
            process.poll()
        for marker in self._outliving_jobs():
            stop_processes(None, marker, grace=10)
        token_file(self.address).unlink(missing_ok=True)
        forget(self.address)
        _LOCAL.pop(self.address, None)
        return len(report.processes)


    def _outliving_jobs(self) -> set[str]:
        """Return the markers of servers whose job outlived this cluster's Ray (killed under them).

        Such a process carries this cluster's token file and GCS address, which Ray gave it: it is provably
        this cluster's job, and only processes with a server's marker are stopped (by that marker).
        """
        token = str(token_file(self.address))
        port = self.gcs_address.rsplit(":", 1)[1]
        found = set()
        for process in psutil.process_iter():
            try:
                env = process.environ()
            except psutil.Error:
                continue
            if (env.get("RAY_AUTH_TOKEN_PATH") == token and env.get("RAY_ADDRESS", "").endswith(f":{port}")
                    and env.get(MARKER_ENV)):
                found.add(env[MARKER_ENV])
        return found


_LOCAL: dict[str, LocalCluster] = {}


def _ray_start(args: list[str], marker: str, log_path: Path, address: str) -> subprocess.Popen:
    """Run ``ray start ... --block`` in its own session; every Ray process it starts carries ``marker``."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray is None:
        raise ClusterError("cluster: Ray is not installed here; pip install 'mixvllm-nb[cluster]' (ray[default])")
    env = inherited_env()
    # `python` in a job's entrypoint is this Python, which has vLLM: its folder goes first on the PATH.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    # The token by its file (0600), never its value, in Ray's environment and so in its jobs'.
    env.update(launch_env(marker), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file(address)),
               RAY_USAGE_STATS_ENABLED="0")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log_file:
        return subprocess.Popen([ray, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                                 *args], stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, close_fds=True)


def start_local_cluster(num_cpus: int = 2, workers: int = 0, worker_cpus: int = 1,
                        timeout: float = 120.0) -> LocalCluster:
    """Start a Ray cluster on this machine, on loopback, with token authentication on; return it once it answers.

    Its token is random, kept in the state dir (0600) for this cluster's address only, and given to
    nothing else. The cluster stops with this process (or with :meth:`LocalCluster.stop`).
    """
    dashboard_port, gcs_port = free_port(), free_port()
    address = f"http://127.0.0.1:{dashboard_port}"
    own = token_file(address)
    own.parent.mkdir(mode=0o700, exist_ok=True)
    own.write_text(secrets.token_hex(32))
    own.chmod(0o600)
    marker = uuid.uuid4().hex
    cluster = LocalCluster(address, f"127.0.0.1:{gcs_port}", marker, registry.state_dir() / "clusters" / marker[:8])
    head = ["--head", "--port", str(gcs_port), "--num-cpus", str(num_cpus), "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--metrics-export-port", str(free_port())]
    try:
        cluster.processes.append(_ray_start(head, marker, cluster.log_dir / "head.log", address))
        _wait_for_nodes(cluster, 1, timeout)
        for _ in range(workers):
            cluster.add_worker(worker_cpus, timeout=timeout)
    except BaseException:
        cluster.stop()  # nothing half-started stays
        raise
    _LOCAL[address] = cluster
    return cluster


def _wait_for_nodes(cluster: LocalCluster, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if any(process.poll() is not None for process in cluster.processes):
            raise ClusterError(f"cluster: `ray start` exited; see {cluster.log_dir}")
        try:
            jobs_client(cluster.address)
            if len(nodes(cluster.address)) >= expected:
                return
        except ClusterError:
            pass
        except Exception:  # noqa: BLE001  (Ray's state API answers errors while its head starts)
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"cluster: {expected} node(s) not up after {timeout:.0f} s; see {cluster.log_dir}")
        time.sleep(1)


def local_clusters() -> list[LocalCluster]:
    """Return the local clusters this process started and has not stopped."""
    return list(_LOCAL.values())


@atexit.register
def _stop_local_clusters() -> None:
    for cluster in local_clusters():
        cluster.stop()


def cluster_nodes(address: str) -> list[dict[str, Any]]:
    """Return the live nodes of the cluster at ``address``: address, head, CPUs, GPUs, memory, accelerator."""
    from .process.ray_jobs import check_address

    return nodes(check_address(address))


def plan_on_cluster(address: str, model: str, *, max_model_len: int | None = None,
                    gpu: str | float | None = None) -> dict[str, Any]:
    """Return how ``model`` splits over the cluster: tensor parallel per node, pipeline parallel across nodes.

    The fewest nodes whose GPUs hold the model with a KV cache for ``max_model_len`` tokens; ``gpu`` names
    the GPU (or its GiB) when Ray does not report the accelerator.
    """
    from .plan import plan

    found = cluster_nodes(address)
    gpu_nodes = [n for n in found if n["gpus"]]
    if not gpu_nodes:
        return {"nodes": found, "device": "cpu", "advice": "no GPUs in this cluster: vLLM's CPU build serves on one "
                "node (the job's); pipeline parallel across CPU nodes needs distributed_executor_backend ray"}
    per_node = min(n["gpus"] for n in gpu_nodes)
    device = gpu or gpu_nodes[0]["accelerator"] or None
    if device is None:
        raise ClusterError(f"cluster {address}: Ray does not say which GPUs its nodes have; pass gpu= (a name "
                           "such as 'H100', or its memory in GiB)")
    last_error = ""
    for pp in range(1, len(gpu_nodes) + 1):
        try:
            result = plan(model, gpu=device, tensor_parallel_size=per_node, pipeline_parallel_size=pp,
                          max_model_len=max_model_len)
        except ClusterError:
            raise
        except Exception as exc:  # noqa: BLE001  (the planner says why a layout does not fit)
            last_error = str(exc)
            continue
        if result.kv_cache_tokens and result.kv_cache_tokens >= (max_model_len or result.max_model_len or 1):
            return {"nodes": found, "device": str(device), "tensor_parallel_size": per_node,
                    "pipeline_parallel_size": pp, "plan": result,
                    "advice": f"--tensor-parallel-size {per_node} (the GPUs of a node) --pipeline-parallel-size "
                              f"{pp} (nodes) --distributed-executor-backend ray"}
    raise ClusterError(f"cluster {address}: {model} does not fit on its {len(gpu_nodes)} GPU node(s) of "
                       f"{per_node} GPU(s)" + (f": {last_error}" if last_error else ""))

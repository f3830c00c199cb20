"""Where a server runs: a process of its own on this machine, or a job on a Ray cluster.

Both start the command and environment the backend builds, write the log a user reads with
``%vllm_logs`` and save the registry record every other process finds the server by. Everything
after the launch (readiness, the heartbeat, stopping) is :class:`~mixvllm_nb.process.server.ServerProcess`'s.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError, ConfigError, ServerStartError
from . import logs, ownership, registry
from .ports import is_loopback
from .ray_jobs import RayJob, check_address, head_host
from .tree import launch_env, start_stamp

if TYPE_CHECKING:
    from .server import ServerProcess

log = logging.getLogger("mixvllm_nb")
JUPYTER_SECRETS = ("JUPYTER_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_API_TOKEN")


def inherited_env() -> dict[str, str]:
    """Return this process's environment for a program we start, without Jupyter's credentials or Ray's token.

    Neither a model server nor a local Ray cluster has any use for them.
    """
    return {k: v for k, v in os.environ.items() if k not in JUPYTER_SECRETS and not k.startswith("RAY_AUTH")}


def check_model_exists(name: str) -> None:
    """Raise ConfigError when ``name`` looks like a local folder that does not exist (a hub id passes)."""
    looks_local = name.startswith(("/", "./", "../", "~")) or os.path.exists(name)
    if looks_local and not Path(name).expanduser().exists():
        raise ConfigError(
            f"model.name: {name!r} is not an existing folder; give a local model folder "
            "or a Hugging Face hub id such as 'org/model'"
        )


def _new_log(server: ServerProcess, command: list[str]) -> Path:
    """Create the server's log, readable by its owner alone, headed by the command line (never the key)."""
    log_dir = Path(server.config.log_dir or registry.state_dir() / "logs").expanduser()
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{server.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    # 0600: the log names the command line and may hold what a model prints; it is its owner's alone.
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as handle:
        handle.write(f"# mixvllm_nb: {' '.join(command)}\n".encode())
    if server.config.profile.enabled:
        Path(server.config.profile.output_dir).mkdir(parents=True, exist_ok=True)
    return path


def _record(server: ServerProcess, **fields: Any) -> registry.ServerRecord:
    return registry.ServerRecord(
        name=server.name, backend=server.get_backend_name(), model=server.model,
        served_model_name=server.served_model_name, host=server.host, port=server.port, base_url=server.base_url,
        api_key=server.api_key, owner=ownership.owner_info(server.owner_kind), identity=server.config.identity(),
        config=server.config.public_dict(), detached=server.detach, **fields,
    )


def start_process(server: ServerProcess) -> tuple[subprocess.Popen, registry.ServerRecord]:
    """Start the server as a process of its own on this machine, in its own session; register it."""
    marker = uuid.uuid4().hex
    env = {**inherited_env(), **server.get_launch_env(), **launch_env(marker)}
    env.setdefault("PYTHONUNBUFFERED", "1")
    command = server.get_launch_command()
    log_path = _new_log(server, command)
    with open(log_path, "ab") as log_file:
        # A new session: the server is not in the kernel's process group, so an interrupt
        # (SIGINT to the group) or a kernel restart never reaches it by accident.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, close_fds=True,
        )
    server.process = process
    record = _record(server, pid=process.pid, create_time=start_stamp(process.pid), marker=marker,
                     log_path=str(log_path))
    registry.save(record)
    log.info("launched %s (pid %s), log %s", server.name, process.pid, log_path)
    return process, record


def submit_job(server: ServerProcess, gpus_per_job: int = 0) -> tuple[RayJob, registry.ServerRecord]:
    """Submit the server to its Ray cluster as a job; register it once the job says where it listens.

    Only the backend's own variables travel (the API key among them, in the job's environment, never
    on its command line); nothing of this machine's environment does. Raises ServerStartError with the
    job's log when it ends before it announces its address, and stops it when that takes too long.
    """
    cluster = server.config.cluster
    address = check_address(cluster.address or "")
    marker = uuid.uuid4().hex
    env = {**server.get_launch_env(), **launch_env(marker), "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)  # the engine side travels as the job's working_dir instead
    command = server.get_launch_command()
    log_path = _new_log(server, command)
    job_id = f"mixvllm-{server.name}-{marker[:8]}"
    job = server.job = RayJob(address, job_id)  # known before Ray is asked: an interrupt meanwhile still stops it
    job.start(command, env=env, runtime_env=cluster.runtime_env, python=cluster.python, num_gpus=gpus_per_job,
              metadata={"mixvllm_server": server.name})
    record = _record(server, marker=marker, log_path=str(log_path), cluster={"address": address, "job_id": job_id})
    registry.save(record)
    log.info("submitted %s to %s as Ray job %s, log %s", server.name, address, job_id, log_path)
    deadline = time.monotonic() + server.config.startup_timeout
    while (where := job.serving_address(job.mirror_log(str(log_path), every=0))) is None:
        if job.poll() is not None or time.monotonic() > deadline:
            text = logs.read_text(log_path)
            cause = job_failure(text) or "no error in its log (`ray job logs` shows Ray's side)"
            raise ServerStartError(f"{server.backend_name} server {server.name}: Ray job {job_id} on {address} "
                                   f"{'ended' if job.poll() is not None else 'did not start'}: {cause}",
                                   cause=cause, log_tail=logs.tail(log_path, 40), log_path=str(log_path))
        time.sleep(0.5)
    if is_loopback(where[0]) and not is_loopback(head_host(address)):
        raise ClusterError(f"cluster {address}: the job's node announced a loopback address ({where[0]}): the "
                           "cluster is reached through a tunnel (kubectl port-forward?), and its servers are not "
                           "reachable from here; give the head's real address")
    server.config.server.host, server.config.server.port = where
    record.host, record.port, record.base_url = where[0], where[1], server.base_url
    record.config, record.cluster = server.config.public_dict(), {**record.cluster, "node": where[0]}
    registry.save(record)
    return job, record


def job_failure(text: str) -> str:
    """Return in one line why a job ended at start: the cluster's Python missing, or the log's error."""
    if "mixvllm_ray_entry.py" in text and ("not found" in text or "No such file" in text):
        return "the cluster's Python (cluster.python) was not found on the node; give a name on its PATH or a full path"
    return logs.failure_cause(text)


def check_cluster_gpus(address: str, needed: int, *, across_nodes: bool) -> int:
    """Return the GPUs the job itself asks Ray for, or ClusterError when no node (or the cluster) has enough.

    With Ray's executor vLLM places its workers itself (across nodes); the job then asks for none.
    """
    from .ray_jobs import nodes

    found = nodes(address)
    if not any(node["gpus"] for node in found):
        return 0  # a CPU cluster: vLLM's CPU build
    if across_nodes:
        total = sum(node["gpus"] for node in found)
        if total < needed:
            raise ClusterError(f"cluster {address}: {needed} GPUs needed and its nodes have {total} in all; "
                               "lower tensor/pipeline parallel sizes or add nodes")
        return 0
    best = max(found, key=lambda node: node["gpus"])
    if best["gpus"] < needed:
        raise ClusterError(f"cluster {address}: no node has the {needed} GPUs asked for (the most on one node: "
                           f"{best['gpus']} on {best['node_ip']}); lower tensor_parallel_size, or use "
                           "distributed_executor_backend ray with pipeline_parallel_size across nodes")
    return needed

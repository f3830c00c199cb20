"""A server run as a Ray job: submit it, ask its state, mirror its log, stop it, list the cluster's nodes.

Ray's own job API (``ray.job_submission.JobSubmissionClient``, the ``cluster`` extra) does the
scheduling; nothing here is a scheduler. :class:`RayJob` is to a cluster server what ``Popen`` is to
a local one: ``poll()`` gives an exit code once the job has ended, ``stop()`` ends it.

Ray's token (clusters started with ``RAY_AUTH_MODE=token``) is found by :func:`ray_token`. It is
sent only to a cluster that asks for one (a first request goes without it), only in a header, and is
never stored in the registry, logged or put in the job's environment.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ClusterError
from . import ENGINE_SIDE

log = logging.getLogger("mixvllm_nb")
SERVING_RE = re.compile(r"^MIXVLLM_SERVING (\S+) (\d+)$", re.MULTILINE)
ENDED = {"STOPPED": -15, "SUCCEEDED": 0, "FAILED": 1}  # Ray's terminal job states, as exit codes
ENTRY_SCRIPT = "mixvllm_ray_entry.py"
_CLIENTS: dict[str, Any] = {}
_HEADERS: dict[str, dict[str, str] | None] = {}
_STATUS: dict[tuple[str, str], tuple[float, str]] = {}
_LOCK = threading.RLock()
_CHATTY = ("ray", "ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env")
STATUS_TTL = 2.0  # seconds a job's state is reused: a listing of ten servers asks Ray once per server


def token_file(address: str) -> Path:
    """Return where the token of a cluster mixvllm_nb started itself is kept (the state dir, 0600)."""
    from .registry import state_dir

    parts = urlsplit(address)
    return state_dir() / "clusters" / f"{parts.hostname}_{parts.port or 80}.token"


def ray_token(address: str) -> tuple[str | None, str]:
    """Return Ray's token for ``address`` and where it came from.

    The token of a cluster mixvllm_nb started (kept per address) first, then the user's
    ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, and Ray's own ``~/.ray/auth_token``.
    """
    own = token_file(address)
    if own.is_file():
        return own.read_text().strip(), "the token of the local cluster mixvllm_nb started"
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token, "RAY_AUTH_TOKEN"
    for source in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token")):
        if source and Path(source).expanduser().is_file():
            token = Path(source).expanduser().read_text().strip()
            if token:
                return token, source
    return None, ""


def check_address(address: str) -> str:
    """Return the job API's URL without a trailing slash; ClusterError naming what is allowed otherwise."""
    parts = urlsplit(address.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClusterError(f"cluster.address: {address!r} is not the URL of a Ray cluster's job API; "
                           "give http://HEAD:8265 (the dashboard's address)")
    return address.strip().rstrip("/")


def head_host(address: str) -> str:
    """Return the host name of the cluster's head, as the notebook reaches it."""
    return urlsplit(address).hostname or ""


REQUEST_TIMEOUT = 10.0  # seconds: Ray's client waits forever by default, and a listing or a stop must not


def _clients() -> tuple[type, type, type]:
    """Return Ray's job and state clients with a timeout on every request, and Ray's AuthenticationError."""
    try:
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient
        from ray.util.state.api import StateApiClient
    except ImportError:
        raise ClusterError("cluster: Ray's job client is not installed here; "
                           "pip install 'mixvllm-nb[cluster]' (ray[default])") from None

    class TimedJobs(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", REQUEST_TIMEOUT)
            return super()._do_request(method, endpoint, **kwargs)

    class TimedState(StateApiClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", REQUEST_TIMEOUT)
            return super()._do_request(method, endpoint, **kwargs)

    return TimedJobs, TimedState, AuthenticationError


def _connect(address: str) -> tuple[Any, dict[str, Any]]:
    """Return a job client for ``address`` and its headers: Ray's token only if the cluster asks for one.

    The first request goes without a token, even when ``RAY_AUTH_MODE=token`` is set here (Ray's client
    would then add the user's token to every request, to any address): an ``Authorization`` of None is
    ours, and ``requests`` leaves it out.
    """
    import requests

    jobs, _state, authentication_error = _clients()
    token, source = ray_token(address)
    headers: dict[str, Any] = {"Authorization": None}
    try:
        try:
            return jobs(address, headers=dict(headers)), headers  # creating it asks the cluster for its version
        except authentication_error:
            if token is None:
                raise ClusterError(f"cluster {address} asks for Ray's token and none was found: set RAY_AUTH_TOKEN "
                                   "or RAY_AUTH_TOKEN_PATH, or put it in ~/.ray/auth_token (`ray get-auth-token` "
                                   "on the head prints it)") from None
        headers = {"Authorization": f"Bearer {token}"}
        return jobs(address, headers=dict(headers)), headers
    except authentication_error:
        raise ClusterError(f"cluster {address} refused the Ray token from {source}: it is not this cluster's "
                           "(`ray get-auth-token` on the head prints the right one)") from None
    except (ConnectionError, requests.exceptions.RequestException):
        raise ClusterError(f"cluster.address: no Ray cluster answers at {address}; start one (ray start --head "
                           "--dashboard-host ...) or give its job API's address, http://HEAD:8265") from None
    except RuntimeError as exc:  # an HTTP server that is not Ray's job API (a 404 for /api/version)
        raise ClusterError(f"cluster.address: {address} is not a Ray job API ({str(exc).splitlines()[0][:160]}); "
                           "give the dashboard's address, http://HEAD:8265") from None


def jobs_client(address: str) -> Any:
    """Return the (cached) job client of a cluster; ClusterError in one line when it cannot be reached."""
    with _LOCK:
        client = _CLIENTS.get(address)
    if client is None:  # connecting takes a request: never under the lock other clusters' callers wait on
        client, headers = _connect(address)
        with _LOCK:
            _CLIENTS[address], _HEADERS[address] = client, headers
    return client


def forget(address: str) -> None:
    """Drop what is cached of a cluster (its client, token header, job states): it restarted, or went away."""
    with _LOCK:
        _CLIENTS.pop(address, None)
        _HEADERS.pop(address, None)
        for key in [key for key in _STATUS if key[0] == address]:
            _STATUS.pop(key, None)


def nodes(address: str) -> list[dict[str, Any]]:
    """Return the cluster's live nodes: address, head or not, CPUs, GPUs, memory (GiB), accelerator."""
    jobs_client(address)  # reachable, and the token it needs known
    from ray.util.state.common import ListApiOptions, StateResource

    _jobs, state, _error = _clients()
    client = state(address, headers={"Content-Type": "application/json", **(_HEADERS.get(address) or {})})
    try:
        options = ListApiOptions(detail=True, timeout=int(REQUEST_TIMEOUT))
        found = client.list(StateResource.NODES, options=options, raise_on_missing_output=False)
    except Exception as exc:  # noqa: BLE001  (Ray's state API errors come in several types)
        raise ClusterError(f"cluster {address}: its nodes could not be listed: {str(exc).splitlines()[0][:200]}"
                           ) from None
    out = []
    for node in found:
        if node.state != "ALIVE":
            continue
        total = node.resources_total or {}
        accelerator = next((k.split(":", 1)[1] for k in total if k.startswith("accelerator_type:")), "")
        out.append({"node_ip": node.node_ip, "head": bool(node.is_head_node), "cpus": int(total.get("CPU", 0)),
                    "gpus": int(total.get("GPU", 0)), "memory_gib": round(total.get("memory", 0) / 1024**3, 1),
                    "accelerator": accelerator})
    return sorted(out, key=lambda n: (not n["head"], n["node_ip"]))


class RayJob:
    """A model server submitted to a Ray cluster as a job, followed like a local process."""

    def __init__(self, address: str, job_id: str) -> None:
        self.address = address
        self.job_id = job_id
        self._text = ""  # the job's log as far as it is copied to the local log file
        self._fetched_at = float("-inf")

    def start(self, command: list[str], *, env: dict[str, str], runtime_env: dict[str, Any], python: str,
              num_gpus: int, metadata: dict[str, str]) -> RayJob:
        """Submit ``command`` as this job, which first binds it where the notebook reaches it (see engine_side)."""
        import shlex

        address, job_id = self.address, self.job_id

        runtime = dict(runtime_env)
        if "working_dir" in runtime:
            raise ClusterError("cluster.runtime_env.working_dir: set by mixvllm_nb (it ships the job's entry "
                               "script); use py_modules or pip for your own code")
        runtime["working_dir"] = ENGINE_SIDE
        runtime["env_vars"] = {**runtime.get("env_vars", {}), **env}
        entry = [python, ENTRY_SCRIPT, "--reach", head_host(address), "--", *command]
        client = jobs_client(address)
        # Not Ray's "Uploading package ..." in the user's cell: its job client logs at INFO.
        quiet = [logging.getLogger(name) for name in _CHATTY]
        levels = [logger.level for logger in quiet]
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        try:
            client.submit_job(entrypoint=shlex.join(entry), submission_id=job_id, runtime_env=runtime,
                              metadata=metadata, entrypoint_num_gpus=num_gpus or None)
        except RuntimeError as exc:  # Ray's answer to a bad runtime_env or a taken id, in its own words
            raise ClusterError(f"cluster {address} refused the job: {str(exc).splitlines()[-1][:300]}") from None
        finally:
            for logger, level in zip(quiet, levels, strict=True):
                logger.setLevel(level)
        return self

    @classmethod
    def from_record(cls, cluster: dict[str, Any]) -> RayJob:
        """Return the job a registry record's ``cluster`` entry names."""
        return cls(cluster["address"], cluster["job_id"])

    def status(self, *, fresh: bool = False) -> str:
        """Return Ray's state of the job (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED); UNKNOWN if unreachable."""
        key = (self.address, self.job_id)
        now = time.monotonic()
        with _LOCK:
            cached = _STATUS.get(key)
        if cached and not fresh and now - cached[0] < STATUS_TTL:
            return cached[1]
        try:
            status = str(jobs_client(self.address).get_job_status(self.job_id).value)
        except ClusterError:
            return "UNKNOWN"  # unreachable, or the token is no longer taken: nothing is known of the job
        except Exception as exc:  # noqa: BLE001  (Ray raises RuntimeError for a job it no longer knows)
            if "does not exist" in str(exc):
                status = "GONE"
            else:  # a timeout, a 5xx, a client that a restart made stale: ask afresh next time
                forget(self.address)
                return "UNKNOWN"
        with _LOCK:
            _STATUS[key] = (now, status)
        return status

    def poll(self) -> int | None:
        """Return None while the job runs (or the cluster cannot say), else its exit code (-15 when stopped)."""
        status = self.status()
        if status == "GONE":
            return -9
        return ENDED.get(status)

    def logs(self) -> str:
        """Return the job's whole log as Ray keeps it ('' when Ray cannot give it)."""
        try:
            return jobs_client(self.address).get_job_logs(self.job_id)
        except Exception:  # noqa: BLE001  (a log is never worth an error: the state says what happened)
            return ""

    def mirror_log(self, path: str, *, every: float = 1.0) -> str:
        """Copy the job's log into the local log file at ``path`` (after its header line); return the log.

        Written in place from the same offset each time, so two processes copying at once write the same
        bytes, and a reader following the file sees only what is new. At most one fetch per ``every`` s.
        """
        now = time.monotonic()
        if now - self._fetched_at < every:
            return self._text
        self._fetched_at, text = now, self.logs()
        if text and path:
            data = text.encode(errors="replace")
            try:
                with open(path, "r+b") as handle:
                    start = len(handle.readline())  # after the header mixvllm_nb wrote (the command line)
                    if handle.seek(0, 2) < start + len(data):  # only a longer log is news: Ray's only grows
                        handle.seek(start)
                        handle.write(data)
            except OSError:  # the local copy was removed: Ray still has the log
                pass
        self._text = text or self._text
        return self._text

    def serving_address(self, text: str) -> tuple[str, int] | None:
        """Return the node address and port the job's entry script announced, once it has."""
        found = SERVING_RE.search(text)
        return (found.group(1), int(found.group(2))) if found else None

    def stop(self, timeout: float = 30.0) -> bool:
        """Ask Ray to stop the job and wait until it has ended; return whether it ended in time."""
        try:
            jobs_client(self.address).stop_job(self.job_id)
        except ClusterError:  # the cluster does not answer (gone, or out of reach): its state stays unknown
            return False
        except Exception as exc:  # noqa: BLE001  (already ended, or gone: nothing left to stop)
            log.info("mixvllm_nb: Ray job %s: %s", self.job_id, exc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(fresh=True)
            if status in (*ENDED, "GONE"):
                return True
            if status == "UNKNOWN":  # the cluster stopped answering: waiting tells nothing more
                return False
            time.sleep(0.5)
        return False

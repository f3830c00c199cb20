"""A watchdog process: stops a server when the process that owns it dies without stopping it.

A kernel killed with SIGKILL runs no ``atexit`` handler, and vLLM's engine children survive their
parent (docs/FINDINGS.md). So each owned server gets this small sibling process, which polls its
owner and, once the owner is gone, stops the server's whole tree and forgets its registry entry.

    python -m mixvllm_nb.process.watchdog --owner PID:STAMP --server PID:STAMP --name NAME
    python -m mixvllm_nb.process.watchdog --owner PID:STAMP --job JOB_ID --name NAME

A server on a Ray cluster (``--job``) is stopped through Ray's job API once its owner is gone; until
then the watchdog only reads the server's record (no request to the cluster, no Ray import).

STAMP is :func:`tree.start_stamp` (seconds after boot): a wall-clock step never makes a live owner
look dead. The server's marker comes in ``MIXVLLM_WATCHED_MARKER``; only processes carrying it are
ever signalled.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from ..errors import MixVLLMError
from . import registry
from .tree import process_matches, server_processes, stop_processes


def _pid_ctime(text: str) -> tuple[int, float | None]:
    pid, _, ctime = text.partition(":")
    return int(pid), (float(ctime) if ctime and ctime != "None" else None)


def main(argv: list[str] | None = None) -> int:
    """Watch until the server or its owner is gone; stop the server in the second case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner", required=True, help="PID:START_STAMP of the owning process")
    server_or_job = parser.add_mutually_exclusive_group(required=True)
    server_or_job.add_argument("--server", help="PID:START_STAMP of the server")
    server_or_job.add_argument("--job", help="the Ray job id of a server on a cluster")
    parser.add_argument("--name", required=True, help="registry name of the server")
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    owner_pid, owner_ctime = _pid_ctime(args.owner)
    if args.job:
        return _watch_job(args.name, args.job, owner_pid, owner_ctime, args.interval)
    server_pid, server_ctime = _pid_ctime(args.server)
    marker = os.environ.get("MIXVLLM_WATCHED_MARKER") or None
    while True:
        server = process_matches(server_pid, server_ctime)
        if server is None:
            # The server ended on its own: sweep orphans that carry its marker, then leave.
            if marker and server_processes(None, marker):
                stop_processes(None, marker, grace=5)
            if process_matches(owner_pid, owner_ctime) is None:
                # Its owner died too (a kernel killed while it was stopping it): nobody else will forget it.
                _forget(args.name, server_pid, marker)
            return 0
        if process_matches(owner_pid, owner_ctime) is None:
            stop_processes(server, marker, grace=6, kill_wait=3)
            _forget(args.name, server_pid, marker)
            return 0
        time.sleep(args.interval)


def _watch_job(name: str, job_id: str, owner_pid: int, owner_ctime: float | None, interval: float) -> int:
    """Stop the Ray job of server ``name`` once its owner is gone; leave when its record is (stopped by its owner)."""
    while True:
        try:
            record = registry.get(name, missing_ok=True)
        except MixVLLMError:
            return 0
        if record is None or record.cluster.get("job_id") != job_id:
            return 0
        if process_matches(owner_pid, owner_ctime) is None:
            from .stopping import stop_record

            stop_record(record)
            return 0
        time.sleep(interval)


def _forget(name: str, server_pid: int, marker: str | None) -> None:
    """Remove the server's record, unless the name now belongs to another server."""
    try:
        record = registry.get(name, missing_ok=True)
        if record is not None and record.pid == server_pid and record.marker == marker:
            registry.remove(name, expected=record)
    except MixVLLMError:  # an unsafe state dir: the server is stopped, its record is not ours to touch
        pass


if __name__ == "__main__":
    sys.exit(main())

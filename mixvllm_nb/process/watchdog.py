"""A watchdog process: stops a server when the process that owns it dies without stopping it.

A kernel killed with SIGKILL runs no ``atexit`` handler, and vLLM's engine children survive their
parent (docs/FINDINGS.md). So each owned server gets this small sibling process, which polls its
owner and, once the owner is gone, stops the server's whole tree and forgets its registry entry.

    python -m mixvllm_nb.process.watchdog --owner PID:STAMP --server PID:STAMP --name NAME

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
    parser.add_argument("--server", required=True, help="PID:START_STAMP of the server")
    parser.add_argument("--name", required=True, help="registry name of the server")
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    owner_pid, owner_ctime = _pid_ctime(args.owner)
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

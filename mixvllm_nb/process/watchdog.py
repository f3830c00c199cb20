"""A watchdog process: stops a server when the process that owns it dies without stopping it.

A kernel killed with SIGKILL runs no ``atexit`` handler, and vLLM's engine children survive their
parent (FINDINGS.md). So each owned server gets this small sibling process, which polls its
owner and, once the owner is gone, stops the server's whole tree and forgets its registry entry.

    python -m mixvllm_nb.process.watchdog --owner PID:CTIME --server PID:CTIME --name NAME
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from . import registry
from .tree import process_matches, server_processes, stop_processes


def _pid_ctime(text: str) -> tuple[int, float | None]:
    pid, _, ctime = text.partition(":")
    return int(pid), (float(ctime) if ctime and ctime != "None" else None)


def main(argv: list[str] | None = None) -> int:
    """Watch until the server or its owner is gone; stop the server in the second case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner", required=True, help="PID:CREATE_TIME of the owning process")
    parser.add_argument("--server", required=True, help="PID:CREATE_TIME of the server")
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
            return 0
        if process_matches(owner_pid, owner_ctime) is None:
            stop_processes(server, marker, grace=6, kill_wait=3)
            registry.remove(args.name)
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())

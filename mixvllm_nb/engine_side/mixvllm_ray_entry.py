"""The entrypoint of a Ray job that serves a model: bind where the notebook can reach, say where, then run it.

    python mixvllm_ray_entry.py --reach HEAD_HOST -- python -m vllm.entrypoints.openai.api_server ... \
        --host - --port 0 ...

A Ray job runs on whichever node Ray picks, so the notebook cannot know in advance the address or a
free port there. This script runs first on that node: it finds the node's address on the route to the
cluster's head (loopback for a cluster on this machine), picks a free port when the command asks for
port 0, puts both into the command's ``--host`` and ``--port``, prints one ``MIXVLLM_SERVING`` line
that mixvllm_nb reads from the job's log, and replaces itself with the command (no process in between:
Ray's ``stop_job`` signals the server itself). Standard library only: it runs in the cluster's Python.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

MARK = "MIXVLLM_SERVING"


def reachable_address(head_host: str) -> str:
    """Return this node's address on the route to ``head_host`` (no packet is sent: UDP connect only picks it)."""
    try:
        family = socket.AF_INET6 if ":" in head_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((head_host, 9))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def free_port(host: str) -> int:
    """Return a TCP port that nothing listens on at ``host`` now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def with_address(command: list[str], host: str, port: int) -> list[str]:
    """Return ``command`` with the values of ``--host`` and ``--port`` replaced."""
    out = list(command)
    for flag, value in (("--host", host), ("--port", str(port))):
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reach", required=True, help="the cluster head's host: bind on the route to it")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the server's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    host = reachable_address(args.reach)
    port = int(command[command.index("--port") + 1]) if "--port" in command else 0
    port = port or free_port(host)
    print(f"{MARK} {host} {port}", flush=True)
    os.execvp(command[0], with_address(command, host, port))


if __name__ == "__main__":
    sys.exit(main())

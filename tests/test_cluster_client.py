"""Ray's token goes only to a cluster that asks for it; an address that is not Ray's job API is one line.

Ray's real job client (``ray.job_submission``) talks here to a stand-in of a cluster's dashboard: a small
HTTP server that answers ``/api/version`` as Ray 2.60's does without token authentication, and records
the headers it gets. (tests/test_cluster.py runs a real cluster, with token authentication on.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mixvllm_nb.errors import ClusterError
from mixvllm_nb.process.ray_jobs import forget, jobs_client

VERSION = {"version": "4", "ray_version": "2.60.0", "ray_commit": "stand-in", "session_name": "stand-in"}


@contextmanager
def dashboard(status: int = 200) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A stand-in dashboard answering every GET with ``status`` (Ray's version JSON on 200); yields (URL, headers seen)."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            seen.append(dict(self.headers))
            body = json.dumps(VERSION if status == 200 else {"detail": "Not Found"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_token_is_not_sent_to_a_cluster_that_does_not_ask_even_with_ray_auth_mode_token(tmp_path):
    # RAY_AUTH_MODE=token makes Ray's own client add the user's token to every request, to any address;
    # Ray reads it when it is imported, so the client runs in a process started with it set.
    script = ("import sys; from mixvllm_nb.process.ray_jobs import jobs_client; jobs_client(sys.argv[1]); "
              "print('connected')")
    with dashboard() as (address, seen):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MIXVLLM_STATE_DIR": str(tmp_path / "state"),
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "secret-of-another-cluster"}
        done = subprocess.run([sys.executable, "-c", script, address], env=env, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0 and "connected" in done.stdout, done.stderr[-2000:]
    assert seen, "the client asked the stand-in nothing"
    for headers in seen:
        assert all(name.lower() != "authorization" for name in headers), headers  # Ray alone sends one
        assert "secret-of-another-cluster" not in json.dumps(headers), headers


def test_an_http_server_that_is_not_ray_reads_as_one_line():
    with dashboard(status=404) as (address, _seen):
        forget(address)
        with pytest.raises(ClusterError, match=r"^cluster.address: http://127.0.0.1:\d+ is not a Ray job API "
                                               r"\(Version check returned 404\..*\); give the dashboard's address"):
            jobs_client(address)

"""Helpers of the server-extension tests (no tests here): a stand-in upstream and a real Jupyter process.

The stand-in is a tiny OpenAI-shaped server. It is used where a test needs what a real engine cannot
give: exact timing (events a fixed interval apart), a record of every request it received (headers
included), and the moment it noticed its client going away. Answers that need a model use the
session's real vLLM server instead.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from mixvllm_nb.backends import register_backend
from mixvllm_nb.backends.base import InferenceServer
from mixvllm_nb.process import registry
from mixvllm_nb.process.ports import free_port

STANDIN_MODEL = "standin-model"


@dataclass
class Hit:
    """One request the stand-in received, and how its answer ended."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    started: float
    ended: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    client_left: bool = False

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class StandInUpstream:
    """An OpenAI-shaped upstream on 127.0.0.1 that records requests and streams on a fixed clock.

    A streamed chat or completion sends ``events`` content events ``interval`` seconds apart (the
    first after ``first_delay``), then ``[DONE]``. Between events it watches its socket, so it notices a client leaving at once.
    """

    def __init__(self, *, api_key: str = "", events: int = 5, interval: float = 0.5, first_delay: float = 0.0,
                 port: int = 0, health_delay: float = 0.0):
        self.api_key = api_key
        self.health_delay = health_delay  # a slow /health, like an engine busy loading
        self.events = events
        self.interval = interval
        self.first_delay = first_delay  # silence before the first event, like a long prefill
        self.hits: list[Hit] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StandInUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def register(self, name: str) -> registry.ServerRecord:
        """Register this upstream as an attached server called ``name``."""
        record = registry.ServerRecord(
            name=name, backend="vllm", model=STANDIN_MODEL, served_model_name=STANDIN_MODEL, host="127.0.0.1",
            port=self._server.server_address[1], base_url=self.url, api_key=self.api_key, kind="attached",
            state="ready", config={"model": {"name": STANDIN_MODEL}, "server": {"name": name}},
        )
        registry.save(record)
        return record

    def wait_for_hits(self, count: int, timeout: float = 10.0) -> list[Hit]:
        """Return the hits once there are ``count`` of them (or what came within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(self.hits) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.hits)


@contextmanager
def registered_upstream(name: str, **options: Any) -> Iterator[StandInUpstream]:
    """A stand-in upstream registered as the attached server ``name``; forgotten afterwards."""
    with StandInUpstream(**options) as stand_in:
        stand_in.register(name)
        try:
            yield stand_in
        finally:
            registry.remove(name)


def _handler_class(upstream: StandInUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: the end of a streamed answer is the end of the connection (no chunked framing).
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._serve(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._serve(self.rfile.read(length) if length else b"")

        def _serve(self, body: bytes) -> None:
            hit = Hit(self.command, self.path, dict(self.headers.items()), body, time.monotonic())
            upstream.hits.append(hit)
            try:
                self._answer(hit)
            except (BrokenPipeError, ConnectionResetError):
                hit.client_left = True
            finally:
                hit.ended_at = time.monotonic()
                hit.ended.set()

        def _answer(self, hit: Hit) -> None:
            sent_key = {k.lower(): v for k, v in hit.headers.items()}.get("authorization")
            if upstream.api_key and sent_key != f"Bearer {upstream.api_key}":
                return self._json(401, {"error": {"message": "bad key", "type": "auth", "code": 401}})
            if hit.path == "/health":
                time.sleep(upstream.health_delay)
                return self._json(200, {})
            if hit.path == "/metrics":
                return self._text(200, "standin_requests_total 1\n")
            if hit.path == "/v1/models":
                return self._json(200, {"object": "list", "data": [{"id": STANDIN_MODEL, "object": "model"}]})
            if hit.path in ("/v1/chat/completions", "/v1/completions") and hit.method == "POST":
                request = hit.json()
                if request.get("stream"):
                    return self._stream(hit, chat=hit.path.endswith("chat/completions"))
                # Not streamed: an echo of what arrived, so a test can see what the proxy forwarded.
                return self._json(200, {"object": "echo", "path": hit.path, "headers": hit.headers,
                                        "request": request,
                                        "choices": [{"index": 0, "message": {"role": "assistant",
                                                                             "content": "echo"}}]})
            if hit.path == "/v1/embeddings":
                return self._json(200, {"object": "list", "data": [{"embedding": [0.0], "index": 0}]})
            return self._json(404, {"error": {"message": f"no route {hit.path}", "type": "nf", "code": 404}})

        def _stream(self, hit: Hit, *, chat: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.flush()
            for i in range(upstream.events):
                if self._client_left_within(upstream.interval if i else upstream.first_delay):
                    hit.client_left = True
                    return
                piece = f"tok{i} "
                if chat:
                    choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    obj = "chat.completion.chunk"
                else:
                    choice = {"index": 0, "text": piece, "finish_reason": None}
                    obj = "text_completion"
                event = {"id": "standin", "object": obj, "created": 0, "model": STANDIN_MODEL, "choices": [choice]}
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

        def _client_left_within(self, seconds: float) -> bool:
            """Wait ``seconds``, returning True as soon as the client closes its end."""
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([self.connection], [], [], left)
                if readable:
                    try:
                        if not self.connection.recv(1, socket.MSG_PEEK):
                            return True
                    except OSError:
                        return True
                    time.sleep(0.01)  # unexpected extra bytes: keep waiting
            return False

        def _json(self, status: int, data: Any) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _text(self, status: int, text: str) -> None:
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


class JupyterProcess:
    """A real ``jupyter server`` subprocess with this extension on, for clients that block (openai, httpx)."""

    def __init__(self, root: Path, home: Path, *, extra_config: dict[str, Any] | None = None,
                 python: str = sys.executable):
        self.root = root
        self.python = python
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.runtime_dir = home / "runtime"
        config_dir = home / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        config = {"ServerApp": {"jpserver_extensions": {"mixvllm_nb": True, "jupyter_server_terminals": True}},
                  **(extra_config or {})}
        (config_dir / "jupyter_server_config.json").write_text(json.dumps(config))
        self.env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir), "JUPYTER_RUNTIME_DIR": str(self.runtime_dir)}
        self.log_path = home / "jupyter.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 60.0) -> JupyterProcess:
        command = [self.python, "-m", "jupyter_server", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                   "--ServerApp.port_retries=0", "--allow-root", f"--ServerApp.root_dir={self.root}"]
        env = {**self.env, "JUPYTER_TOKEN": self.token}  # in the environment: `ps` shows command lines
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter server exited: {self.log_path.read_text()[-3000:]}")
            try:
                request = urllib.request.Request(f"{self.url}api/status",
                                                 headers={"Authorization": f"token {self.token}"})
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"jupyter server not ready after {timeout} s: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def proxy_v1(self, name: str) -> str:
        return f"{self.url}mixvllm/servers/{name}/v1"


def wait_for_no_records(state: Path, timeout: float = 60.0) -> list[Path]:
    """Return the server records left in a state dir once none is left, or after ``timeout`` seconds.

    A kernel that shuts down stops its servers on its way out, or its watchdog does a moment later.
    """
    deadline = time.monotonic() + timeout
    while (left := sorted(state.glob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


_OWNER = """
import sys
sys.path.insert(0, {tests!r})
from test_server_support import StandInProcess
from mixvllm_nb.process.ports import free_port
server = StandInProcess("standin-model", name={name!r}, port=free_port()).start()
print(server.pid, flush=True)
sys.stdin.read()  # alive, and owning the server, until the test is done
"""


@contextmanager
def owned_elsewhere(name: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """A stand-in server called ``name`` that another live Python process owns: yields (owner, server pid)."""
    owner = subprocess.Popen([sys.executable, "-c", _OWNER.format(tests=str(Path(__file__).parent), name=name)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield owner, int(owner.stdout.readline())
    finally:
        owner.communicate("", timeout=60)  # its exit stops the server if the test did not


class StandInProcess(InferenceServer):
    """A backend whose server is this file run as a script: the real lifecycle without loading a model.

    It starts listening ``STANDIN_DELAY`` seconds after launch, so a test can see the "starting" state.
    """

    backend_name: ClassVar[str] = "standin-proc"

    def build_command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port)]

    def build_env(self) -> dict[str, str]:
        return {"STANDIN_API_KEY": self.api_key, "STANDIN_DELAY": "1.5"}


register_backend(StandInProcess)


def _serve_as_process(argv: list[str]) -> None:
    port = int(argv[argv.index("--port") + 1])
    time.sleep(float(os.environ.get("STANDIN_DELAY", "0")))
    with StandInUpstream(api_key=os.environ.get("STANDIN_API_KEY", ""), port=port) as upstream:
        upstream._thread.join()


if __name__ == "__main__":
    _serve_as_process(sys.argv)

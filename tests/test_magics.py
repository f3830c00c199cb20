"""The magics in a real kernel (jupyter_client) against real vLLM CPU servers.

Chat, status, logs and attach use the session's shared server (``%vllm_serve`` with the same
config reuses it). Lifecycle tests (progress, restart, SIGKILL, --detach) start their own.
"""

from __future__ import annotations

import json
import re
import signal
import time

import psutil
import pytest
from device_expectations import GPU_PLAN_TOLERANCE, on_gpu, own_server_flags, shared_kv_tokens
from kernel_helpers import Kernel

from conftest import marked_alive
from mixvllm_nb.process import registry
from mixvllm_nb.process.ports import port_is_free
from mixvllm_nb.process.stopping import stop_named

pytestmark = pytest.mark.vllm  # a real engine in every test

SHARED_SERVE = "%vllm_serve --name shared --temperature 0 --max-tokens 64"


@pytest.fixture(scope="module")
def kernel(vllm_server):
    k = Kernel()
    k.run("%load_ext mixvllm_nb")
    yield k
    k.shutdown()


def _wait(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_load_ext_is_light():
    k = Kernel()
    try:
        cell = k.run(
            "import sys, time, json\n"
            "t = time.perf_counter(); get_ipython().run_line_magic('load_ext', 'mixvllm_nb'); t = time.perf_counter() - t\n"
            "print(json.dumps({'seconds': t, 'heavy': [m for m in ('torch', 'vllm', 'transformers', 'openai') if m in sys.modules],"
            " 'magics': sorted(m for m in get_ipython().magics_manager.magics['line'] if m.startswith('vllm_'))}))"
        )
        info = json.loads(cell.stdout)
        assert info["heavy"] == []
        assert {"vllm_serve", "vllm_status", "vllm_logs", "vllm_stop", "vllm_list", "vllm_chat",
                "vllm_generate", "vllm_attach", "vllm_client", "vllm_terminal"} <= set(info["magics"])
        # `%vllm_serve?` shows the docstring that magic_arguments generated from the arguments
        help_cell = k.run("print(get_ipython().magics_manager.magics['line']['vllm_serve'].__doc__)")
        assert "--no-wait" in help_cell.stdout and "return at once" in help_cell.stdout
    finally:
        k.shutdown()


def test_identical_config_reuses_the_running_server(kernel, vllm_server):
    cell = kernel.run(SHARED_SERVE)
    assert cell.error is None, cell.error
    assert cell.stdout.startswith(f"Reused {vllm_server.name}")
    assert "shared" in cell.result and "ready" in cell.result
    assert len(psutil.Process(vllm_server.pid).children(recursive=True)) >= 2  # still one model load


def test_chat_streams_paris_in_several_updates(kernel, vllm_server):
    cell = kernel.run("%vllm_chat --server shared --new What is the capital of France?")
    assert cell.error is None, cell.error
    assert "Paris" in cell.stdout
    assert len(cell.streams) > 3  # tokens arrived as separate output updates
    follow_up = kernel.run("%vllm_chat --server shared Repeat the name of that city only.")
    assert "Paris" in follow_up.stdout  # the conversation was remembered


def test_cell_chat_and_generate(kernel):
    cell = kernel.run("%%vllm_chat --server shared --new --max-tokens 12\nWhat is the capital of France?")
    assert "Paris" in cell.stdout
    gen = kernel.run("%vllm_generate --server shared --max-tokens 8 --temperature 0 The capital of France is")
    assert gen.error is None and gen.stdout.strip()
    # Each answer ends with what it cost, from the server's own usage count.
    assert re.search(r"\[8 tokens \(\d+ prompt\) in [\d.]+ s, first after \d+ ms, [\d.]+ tokens/s\]", gen.stdout)
    assert re.search(r"\[\d+ tokens \(\d+ prompt\) in ", cell.stdout)


def test_client_magic_returns_a_configured_openai_client(kernel, vllm_server):
    cell = kernel.run("c = %vllm_client shared\nprint(c.base_url, [m.id for m in c.models.list().data])")
    assert f"{vllm_server.base_url}/v1/" in cell.stdout
    assert vllm_server.served_model_name in cell.stdout


def test_status_list_and_logs(kernel, vllm_server):
    status = kernel.run("%vllm_status shared")
    assert status.error is None, status.error
    html = status.data("text/html")[0]
    assert "shared" in html and "ready" in html and f"{shared_kv_tokens(vllm_server.log_path):,}" in html
    listing = kernel.run("%vllm_list")
    assert "shared" in listing.result and "ready" in listing.result
    logs = kernel.run("%vllm_logs shared -n 5")
    assert len(logs.stdout.strip().splitlines()) == 5


def test_interrupting_a_follow_leaves_the_server_alive(kernel, vllm_server):
    kernel.client.execute("%vllm_logs shared -n 1 --follow")
    time.sleep(2)
    kernel.manager.interrupt_kernel()
    cell = kernel.run("print('after')")
    assert "after" in cell.stdout
    assert vllm_server.check_health()
    assert registry.get("shared").process_alive()


def test_attach_by_url_then_detach(kernel, vllm_server):
    cell = kernel.run(f"%vllm_attach {vllm_server.base_url} --api-key {vllm_server.api_key} --name remote")
    assert cell.error is None, cell.error
    assert "Attached remote" in cell.stdout
    chat = kernel.run("%vllm_chat --server remote --new --temperature 0 What is the capital of France?")
    assert "Paris" in chat.stdout
    stop = kernel.run("%vllm_stop remote")
    assert "detached remote" in stop.stdout
    assert vllm_server.check_health() and registry.get("remote", missing_ok=True) is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("%vllm_stop nosuch", "no server named 'nosuch'"),
        ("%vllm_serve --gpu-memory 2", "inference.gpu_memory_utilization"),
        ("%vllm_serve --port abc", "invalid"),
        ("%vllm_serve --set nonsense", "expected PATH=VALUE"),
        ("%vllm_serve --set inference.colour=blue", "inference.colour: unknown key"),
        ("%vllm_serve --name shared --max-model-len 1024", "already running with a different config"),
        ("%vllm_chat --server nosuch hello", "no server named 'nosuch'"),
        ("%vllm_logs nosuch", "no server named 'nosuch'"),
        ("%vllm_attach not-a-url", "is not an http(s) URL"),
        ("%vllm_chat --server shared", "nothing to say"),
        ("%vllm_chat --server shared --image /no/such.png describe", "no such file"),
        ("%vllm_profile start shared", "was not started with profile: {enabled: true, tool: pytorch}"),
        ("%vllm_profile pause shared", "invalid choice: 'pause' (choose from 'start', 'stop')"),
        ("%vllm_client shared --via carrier-pigeon", "invalid choice: 'carrier-pigeon' (choose from 'direct', 'proxy')"),
    ],
)
def test_every_error_is_one_line(kernel, line, expected):
    cell = kernel.run(line)
    # IPython shows a UsageError as one line on stderr, with no traceback
    assert cell.error is None
    lines = cell.stderr.strip().splitlines()
    assert len(lines) == 1, cell.stderr
    assert lines[0].startswith("UsageError: ") and expected in lines[0]


def test_no_wait_progress_then_restart_stops_it_and_detach_survives(tmp_path):
    k = Kernel()
    try:
        k.run("%load_ext mixvllm_nb")
        cell = k.run(f"srv = %vllm_serve --name kernel-owned --no-wait{own_server_flags()}")
        assert cell.error is None, cell.error
        assert "Launched kernel-owned" in cell.stdout
        other = k.run("print(1 + 1)")  # the kernel is free while the server starts
        assert other.stdout.strip() == "2"
        shown: list[str] = []  # the phases the cell's progress display showed, in order

        def last_phase() -> str:
            for message in k.drain(1):
                if message["msg_type"] == "update_display_data":
                    html = message["content"]["data"].get("text/html", "")
                    shown.append(html.split("</b>: ", 1)[1].split("<", 1)[0] if "</b>: " in html else html)
            return shown[-1] if shown else ""

        # The progress keeps updating in the cell's output until the server is ready, and then says so. The
        # wait is the server's own start-up timeout (600 s): on a busy machine a start can take minutes.
        assert _wait(lambda: last_phase().startswith("ready"), 600, 0), shown[-3:]
        assert any(not phase.startswith("ready") for phase in shown), shown  # it showed the phases before
        # The kernel's heartbeat writes the registry's record on its next beat.
        assert _wait(lambda: registry.get("kernel-owned").state == "ready", 30)
        owned = registry.get("kernel-owned")
        # The detached one is on the light engine: what a restart spares does not depend on the engine.
        detached_cell = k.run("%vllm_serve --name kernel-detached --detach --backend llamacpp")
        assert "kernel-detached" in detached_cell.stdout, detached_cell.error
        detached = registry.get("kernel-detached")
        k.restart()
        assert _wait(lambda: not marked_alive(owned.marker), 30), "restart left the owned server running"
        # Its record goes once the stop has verified the port free, a moment after the processes.
        assert _wait(lambda: registry.get("kernel-owned", missing_ok=True) is None, 30)
        assert registry.get("kernel-detached").process_alive()
        k.run("%load_ext mixvllm_nb")
        stop = k.run("%vllm_stop kernel-detached")
        assert "nothing left, port free" in stop.stdout, stop.error
        assert marked_alive(detached.marker) == []
    finally:
        k.shutdown()
        if registry.get("kernel-detached", missing_ok=True) is not None:  # the test failed before its stop
            stop_named("kernel-detached")


def test_kernel_sigkill_stops_its_server_within_10s():
    k = Kernel()
    try:
        k.run("%load_ext mixvllm_nb")
        cell = k.run(f"%vllm_serve --name sigkill-owned --max-model-len 4096{own_server_flags()}")
        assert cell.error is None, cell.error
        record = registry.get("sigkill-owned")
        assert record.state == "ready"
        psutil.Process(k.pid).send_signal(signal.SIGKILL)
        assert _wait(lambda: not marked_alive(record.marker), 10), "server outlived its SIGKILLed kernel by 10 s"
        assert _wait(lambda: registry.get("sigkill-owned", missing_ok=True) is None, 5)
        assert port_is_free(record.host, record.port)
    finally:
        k.client.stop_channels()
        k.manager.cleanup_resources()


def test_plan_magic_matches_vllm_and_advises_when_it_does_not_fit(kernel, vllm_server):
    here = kernel.run("%vllm_plan")
    assert here.error is None, here.error
    planned = int(re.search(r"([\d,]+) tokens \([\d,]+ blocks", here.result).group(1).replace(",", ""))
    logged = shared_kv_tokens(vllm_server.log_path)
    if on_gpu():  # the GPU overhead is an estimate
        assert abs(planned - logged) <= GPU_PLAN_TOLERANCE * logged, (planned, logged)
    else:  # exact on the CPU: what the shared server logged at 1 GiB, float32
        assert planned == logged
    config = __import__("pathlib").Path(__file__).parent / "data" / "model_configs" / "llama-3.1-70b.json"
    big = kernel.run(f"%vllm_plan {config} --gpu 'RTX 4090' --dtype bfloat16")
    assert big.error is None, big.error
    assert "tensor_parallel_size" in big.result and "fits" in big.result

"""``mixvllm-serve``: dry runs, one-line errors with exit 1, list/stop, and a real foreground run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from device_expectations import own_server_flags

from conftest import marked_alive
from mixvllm_nb.process import registry
from mixvllm_nb.process.ports import free_port, port_is_free

CLI = [sys.executable, "-m", "mixvllm_nb.cli"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def _launches_of(model: str, since: float) -> list[int]:
    """Return the pids of processes started since ``since`` whose command line names ``model``."""
    return [proc.pid for proc in psutil.process_iter(["cmdline", "create_time"])
            if (proc.info["create_time"] or 0) >= since and any(model in part for part in proc.info["cmdline"] or [])]


def test_dry_run_prints_config_and_command_and_starts_nothing(tmp_path):
    records_before, since, port = [r.name for r in registry.list_records()], time.time() - 1, free_port()
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  name: meta-llama/Llama-2-7b-hf\ngeneration:\n  temperature: 0.7\nserver:\n  port: 8011\n  api_key: top-secret\n")
    result = run_cli("--config", str(config), "--port", str(port), "--temperature", "0.2", "--env", "OMP_NUM_THREADS=2", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"--port {port}" in out  # CLI beats YAML
    assert '"temperature": 0.2' in out
    assert "OMP_NUM_THREADS=2" in out and "VLLM_API_KEY=<hidden>" in out
    assert "top-secret" not in out
    # Nothing was started: no new registry entry, no process of that model, the port still free.
    assert [r.name for r in registry.list_records()] == records_before
    assert _launches_of("meta-llama/Llama-2-7b-hf", since) == []
    assert port_is_free("127.0.0.1", port)


def test_config_errors_are_one_line_and_exit_1(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("inference:\n  gpu_memory_utilization: [\n")
    cases = [
        (["--config", str(bad_yaml)], f"{bad_yaml} line"),
        (["--gpu-memory", "1.7", "--dry-run"], "inference.gpu_memory_utilization: allowed: > 0.0 and <= 1.0 (got 1.7)"),
        (["--port", "80", "--dry-run"], "server.port"),
        (["--port", "abc"], "invalid int value"),
        (["--env", "NOEQUALS", "--dry-run"], "--env 'NOEQUALS'"),
        (["--quantization", "int3", "--dry-run"], "inference.quantization"),
        (["--model", "/no/such/folder", "--dry-run"], "is not an existing folder"),
        (["stop"], "give a server NAME or --all"),
        (["stop", "nobody"], "no server named 'nobody'"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert expected in lines[0], (args, lines[0])


def test_list_shows_the_shared_server(vllm_server):
    result = run_cli("list")
    assert result.returncode == 0
    assert vllm_server.name in result.stdout and str(vllm_server.port) in result.stdout
    assert vllm_server.api_key not in result.stdout


@pytest.mark.vllm  # converts or starts a real model
def test_foreground_serve_then_ctrl_c_stops_the_whole_tree():
    proc = subprocess.Popen(
        [*CLI, "--name", "cli-test", "--temperature", "0", *own_server_flags().split()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 240
        ready_line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "ready at" in line:
                ready_line = line
                break
            assert proc.poll() is None, proc.stderr.read()
        assert ready_line, "mixvllm-serve never reported ready"
        record = registry.get("cli-test")
        assert record.owner["kind"] == "cli"
        key = run_cli("key", "cli-test").stdout.strip()
        assert key == record.api_key and key not in ready_line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marked_alive(record.marker) == []
    assert port_is_free(record.host, record.port)
    assert registry.get("cli-test", missing_ok=True) is None
    assert "nothing left, port free" in proc.stdout.read()


def test_list_clean_removes_dead_entries(tmp_path):
    record = registry.ServerRecord(
        name="ghost", backend="vllm", model="m", served_model_name="m", host="127.0.0.1", port=9,
        base_url="http://127.0.0.1:9", pid=2**22 - 7, create_time=1.0,
    )
    registry.save(record)
    listed = run_cli("list")
    # Its process is gone: it reads "exited" here as in every other front (one view of a server).
    assert "ghost" in listed.stdout and "exited" in listed.stdout
    cleaned = run_cli("list", "--clean")
    assert "removed dead entry ghost" in cleaned.stdout
    assert registry.get("ghost", missing_ok=True) is None

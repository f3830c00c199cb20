"""GPU detection and the panel's GPU rows, with a stand-in ``nvidia-smi`` (two H100s, on any machine).

The stand-in prints what the real one prints for ``--query-gpu=...,utilization.gpu --format=csv,
noheader,nounits`` on two H100s (the row format was read off a real H100 with this project's
device check, see the CHANGELOG). The real detection follows the machine the suite runs on: on a CPU
machine it answers "none" without asking anything; on a GPU machine it finds what ``nvidia-smi -L`` lists.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from device_expectations import on_gpu

from mixvllm_nb import gpu

SMI_ROWS = "0, NVIDIA H100 80GB HBM3, 81559, 80871, 0\n1, NVIDIA H100 80GB HBM3, 81559, 1024, 97\n"


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '{SMI_ROWS}'\n")
    smi.chmod(0o755)
    here = [g.name for g in gpu.detect_gpus(refresh=True)]  # this machine's own GPUs, if any
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(gpu, "_device_nodes_present", lambda: True)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in a kernel that never imported it
    gpu.detect_gpus(refresh=True)
    yield
    monkeypatch.undo()  # first: the cache must be refilled from this machine, not the stand-in
    assert [g.name for g in gpu.detect_gpus(refresh=True)] == here


def test_gpus_come_from_nvidia_smi_without_importing_torch(two_gpus):
    found = gpu.detect_gpus()
    assert [g.name for g in found] == ["NVIDIA H100 80GB HBM3"] * 2
    assert found[0].total_memory == 81559 * 2**20 and found[1].free_memory == 1024 * 2**20
    assert [g.utilization for g in found] == [0, 97]
    assert "torch" not in sys.modules  # no CUDA context was created in this process


def test_the_panel_shows_memory_and_utilization_per_gpu(two_gpus):
    from mixvllm_nb.panel.monitor import MonitorSection, gpu_memory

    rows = gpu_memory()
    assert rows[1] == ("GPU 1 NVIDIA H100 80GB HBM3", (81559 - 1024) * 2**20, 81559 * 2**20, 97)
    monitor = MonitorSection(on_cpu=False)
    monitor._show_memory({"gpus": rows, "rss": None}, server=None)
    texts = [row.children[2].value for row in monitor.memory.children]
    assert texts == ["0.7 / 79.6 GiB · 0 % busy", "78.6 / 79.6 GiB · 97 % busy"]


@pytest.mark.skipif(on_gpu(), reason="this machine has a GPU: the test below checks what it finds")
def test_a_cpu_machine_answers_none_without_asking_anything(monkeypatch):
    def never(*_args, **_kwargs):
        raise AssertionError("a machine without a GPU driver's device nodes must not run nvidia-smi or torch")

    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in a kernel that never imported it
    monkeypatch.setattr(gpu, "_from_nvidia_smi", never)
    monkeypatch.setattr(gpu, "_from_torch", never)
    assert gpu.detect_gpus(refresh=True) == [] and not gpu.has_gpu()
    monkeypatch.undo()
    gpu.detect_gpus(refresh=True)


@pytest.mark.skipif(not on_gpu(), reason="no GPU on this machine: the test above checks that none is found")
def test_a_gpu_machine_finds_every_gpu_nvidia_smi_lists():
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    names = [line.split(":", 1)[1].split("(UUID")[0].strip() for line in listed.splitlines() if line.startswith("GPU ")]
    found = gpu.detect_gpus(refresh=True)
    assert [g.name for g in found] == names and gpu.has_gpu()
    assert all(g.total_memory > 2**30 and g.free_memory is not None for g in found)


def test_the_planner_plans_for_the_detected_gpu_by_its_table_name(two_gpus):
    from pathlib import Path

    from mixvllm_nb.config import ServeConfig
    from mixvllm_nb.plan import plan_for_config

    config_json = Path(__file__).parent / "data" / "model_configs" / "llama-3.1-8b.json"
    planned = plan_for_config(ServeConfig.model_validate({"model": {"name": str(config_json)},
                                                          "inference": {"max_model_len": 8192}}))
    assert planned.device.startswith("H100") and planned.fits and planned.kv_cache_tokens > 100_000

"""GPU detection and the panel's GPU rows, with a stand-in ``nvidia-smi`` (there is no GPU here).

The stand-in prints what the real one prints for ``--query-gpu=...,utilization.gpu --format=csv,
noheader,nounits`` on two H100s (the row format was read off a real H100 with this project's
device check, see the CHANGELOG). On this CPU machine the real detection answers "none" at once.
"""

from __future__ import annotations

import sys

import pytest

from mixvllm_nb import gpu

SMI_ROWS = "0, NVIDIA H100 80GB HBM3, 81559, 80871, 0\n1, NVIDIA H100 80GB HBM3, 81559, 1024, 97\n"


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '{SMI_ROWS}'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    monkeypatch.setattr(gpu, "_device_nodes_present", lambda: True)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in a kernel that never imported it
    gpu.detect_gpus(refresh=True)
    yield
    monkeypatch.undo()  # first: the cache must be refilled from this machine, not the stand-in
    gpu.detect_gpus(refresh=True)
    assert not gpu.has_gpu()


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


def test_a_cpu_machine_answers_none_at_once():
    gpu.detect_gpus(refresh=True)
    assert gpu.detect_gpus() == [] and not gpu.has_gpu()


def test_the_planner_plans_for_the_detected_gpu_by_its_table_name(two_gpus):
    from pathlib import Path

    from mixvllm_nb.config import ServeConfig
    from mixvllm_nb.plan import plan_for_config

    config_json = Path(__file__).parent / "data" / "model_configs" / "llama-3.1-8b.json"
    planned = plan_for_config(ServeConfig.model_validate({"model": {"name": str(config_json)},
                                                          "inference": {"max_model_len": 8192}}))
    assert planned.device.startswith("H100") and planned.fits and planned.kv_cache_tokens > 100_000

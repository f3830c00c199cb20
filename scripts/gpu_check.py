"""On a machine with an NVIDIA GPU: check for real the GPU branches that the test suite stands in for.

The tests run on CPU machines, where ``nvidia-smi`` and CUDA are stand-ins (tests/test_gpu.py,
tests/test_config.py). This script runs the same code against the real driver and prints what it
found; it exits 1 on the first check that fails. It needs no vLLM (command building, planning and
the resource check happen before any launch).

    python scripts/gpu_check.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MIXVLLM_STATE_DIR", tempfile.mkdtemp(prefix="mixvllm-gpu-check-"))


def check(condition: bool, what: str) -> None:
    print(f"{'ok  ' if condition else 'FAIL'} {what}")
    if not condition:
        sys.exit(1)


def main() -> None:
    from mixvllm_nb import VLLMServer
    from mixvllm_nb.config import ServeConfig
    from mixvllm_nb.errors import ConfigError
    from mixvllm_nb.gpu import detect_gpus
    from mixvllm_nb.plan import plan_for_config

    gpus = detect_gpus()
    for g in gpus:
        print(f"     GPU {g.index}: {g.name}, {g.total_memory / 2**30:.1f} GiB, "
              f"{(g.free_memory or 0) / 2**30:.1f} GiB free, {g.utilization} % busy")
    check(bool(gpus) and all(g.free_memory is not None for g in gpus), "nvidia-smi reports every GPU with its memory")
    check("torch" not in sys.modules, "detection imported no torch (no CUDA context in this process)")

    from mixvllm_nb.panel.monitor import MonitorSection, gpu_memory

    rows = gpu_memory()
    monitor = MonitorSection(on_cpu=False)
    monitor._show_memory({"gpus": rows, "rss": None}, server=None)
    shown = [row.children[2].value for row in monitor.memory.children]
    print(f"     panel rows: {shown}")
    check(len(shown) == len(gpus) and all("GiB" in text and "busy" in text for text in shown),
          "the panel shows memory and utilisation per GPU")

    server = VLLMServer("Qwen/Qwen2.5-7B-Instruct", gpu_memory_utilization=0.8, max_model_len=8192)
    command = server.get_launch_command()
    print(f"     {' '.join(command[1:])}")
    check(not server.on_cpu(), "the vLLM backend takes the GPU branch")
    check("--enforce-eager" not in command and "float32" not in command, "no CPU defaults on a GPU")
    check(command[command.index("--gpu-memory-utilization") + 1] == "0.8", "gpu_memory_utilization reaches vLLM")
    check("VLLM_CPU_KVCACHE_SPACE" not in server.get_launch_env(), "no CPU KV cache variable on a GPU")

    server.check_resources()
    too_many = VLLMServer("Qwen/Qwen2.5-7B-Instruct", tensor_parallel_size=len(gpus) + 1)
    try:
        too_many.start()
    except ConfigError as exc:
        print(f"     {exc}")
        check(f"this machine has {len(gpus)}" in str(exc) and too_many.process is None,
              "a layout needing more GPUs than present is refused before launch")
    else:
        check(False, "a layout needing more GPUs than present is refused before launch")

    config_json = ROOT / "tests" / "data" / "model_configs" / "llama-3.1-8b.json"
    config = ServeConfig.model_validate({"model": {"name": str(config_json)}, "inference": {"max_model_len": 8192}})
    detected = plan_for_config(config)
    print(f"     Llama 3.1 8B planned on the detected GPU ({detected.device}): KV cache "
          f"{detected.kv_cache_tokens:,} tokens, max concurrency {detected.max_concurrency:.1f}x, "
          f"fits: {detected.fits}")
    check(detected.kv_cache_tokens is not None and detected.fits, "the planner plans for the detected GPU")
    print("all GPU checks passed")


if __name__ == "__main__":
    main()

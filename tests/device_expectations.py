"""What the tests expect of vLLM on the device the suite runs on: the CPU build, or CUDA where there is a GPU.

``scripts/setup.sh`` installs vLLM's CPU build, or its CUDA build when ``nvidia-smi`` works; the figures
the tests check follow. Whether this machine has a GPU is read from ``nvidia-smi -L`` here, not from
``mixvllm_nb.gpu``, which is under test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

# docs/FINDINGS.md: vLLM's CPU build gives the shared server (SmolLM2, 1 GiB of float32 KV cache) 23,296 tokens.
CPU_SHARED_KV_TOKENS = 23_296
# The planner's GPU term is an estimate, calibrated to within 10 % of vLLM on every log in tests/data/gpu_logs.
GPU_PLAN_TOLERANCE = 0.10
# Each server a test starts beside the shared one takes this share of the GPU: vLLM's default (0.9) would
# leave the next one too little memory to start. SmolLM2 needs well under 1 GiB of it.
GPU_SHARE = 0.1


@cache
def on_gpu() -> bool:
    """Return True when ``nvidia-smi -L`` lists a GPU (then setup.sh installed vLLM's CUDA build)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return re.search(r"^GPU \d+:", listing, re.MULTILINE) is not None


def logged_kv_tokens(log_text: str) -> int:
    """Return the KV cache size vLLM logged ("CPU KV cache size: N tokens" or "GPU KV cache size: N tokens")."""
    found = re.findall(r"KV cache size: ([\d,]+) tokens", log_text)
    assert found, "vLLM logged no 'KV cache size: N tokens' line"
    return int(found[-1].replace(",", ""))


def shared_kv_tokens(log_path: str | Path) -> int:
    """Return the KV cache tokens the shared server must report: 23,296 on the CPU build (a fact measured once,
    docs/FINDINGS.md); on a GPU the figure vLLM logged, since there it follows the GPU's free memory."""
    if not on_gpu():
        return CPU_SHARED_KV_TOKENS
    return logged_kv_tokens(Path(log_path).read_text(errors="replace"))


def engine_process_names() -> set[str]:
    """Return the process titles a running vLLM server must have under its API server.

    The CPU build runs the model in a worker process beside the engine core; the CUDA build runs one GPU's
    model inside the engine core (vLLM's single-process executor), so there is no worker to find.
    """
    return {"VLLM::EngineCore"} if on_gpu() else {"VLLM::EngineCore", "VLLM::Worker"}


def own_server_settings() -> dict[str, float]:
    """Return the inference settings for a server a test starts beside the shared one (a GPU share, or none)."""
    return {"gpu_memory_utilization": GPU_SHARE} if on_gpu() else {}


def own_server_flags() -> str:
    """Return the same as ``%vllm_serve`` / ``mixvllm-serve`` flags, with a leading space (empty on the CPU)."""
    return f" --gpu-memory {GPU_SHARE}" if on_gpu() else ""

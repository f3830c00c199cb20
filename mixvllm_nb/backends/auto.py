"""``backend: auto``: vLLM where it is installed and fits, else the light llama.cpp engine.

vLLM's CPU server holds about 4 GB (docs/FINDINGS.md: 0.74 GB API server, 0.67 GB engine core, 2.5 GB
worker for SmolLM2 with a 1 GiB KV cache); mybinder.org gives 1-2 GB. There, or wherever vLLM is
not installed, the same magics, panel and proxy run on llama.cpp instead, and say so.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import psutil

# What vLLM's CPU server needs for the embedded model, with room for the kernel and Jupyter.
VLLM_CPU_MIN_BYTES = 5 * 2**30
ENGINE_ENV = "MIXVLLM_BACKEND"
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def installed(module: str) -> bool:
    """Return True when ``module`` can be imported (without importing it: vllm takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def memory_limit_bytes() -> int:
    """Return the memory this machine gives us: the container's cgroup limit when it has one
    (Binder's 1-2 GB; ``psutil`` shows the host's), else the machine's total memory.

    Total, not available: a running vLLM server takes 4 GB of what is available, and the same
    config served again must choose the same engine, so that it is reused rather than doubled.
    """
    total = psutil.virtual_memory().total
    for path in _CGROUP_LIMITS:
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < total:
            return int(raw)
    return total


def light_engine_installed() -> bool:
    """Return True when llama.cpp's OpenAI server can run here: ``llama-cpp-python[server]`` and ``gguf``
    (a plain llama-cpp-python, which other packages pull in, lacks the server's uvicorn)."""
    return all(installed(module) for module in ("llama_cpp", "uvicorn", "sse_starlette", "gguf"))


def choose_engine() -> tuple[str, str]:
    """Return the backend ``auto`` stands for here, and why, in words for the user.

    ``$MIXVLLM_BACKEND`` decides when set; else vLLM when it is installed and there is a GPU or
    enough memory for its CPU server; else llama.cpp when installed; else vLLM (whose start
    then says what is missing).
    """
    from ..gpu import has_gpu
    from . import backend_names

    forced = os.environ.get(ENGINE_ENV, "").strip()
    if forced and forced != "auto":
        if forced not in backend_names():
            from ..errors import ConfigError

            allowed = ", ".join(backend_names())
            raise ConfigError(f"${ENGINE_ENV}: {forced!r} is not a backend; allowed: {allowed}")
        return forced, f"${ENGINE_ENV} is {forced}"
    has_vllm, has_llamacpp = installed("vllm"), light_engine_installed()
    if has_vllm and has_gpu():
        return "vllm", "a GPU is present"
    limit = memory_limit_bytes()
    if has_vllm and limit >= VLLM_CPU_MIN_BYTES:
        return "vllm", f"{limit / 2**30:.1f} GiB of memory is enough for vLLM's CPU server"
    if has_llamacpp:
        why = ("vLLM is not installed" if not has_vllm
               else f"{limit / 2**30:.1f} GiB of memory is too little for vLLM's CPU server (about 4 GB)")
        return "llamacpp", why
    if not has_vllm:
        return "vllm", "neither vLLM nor the light engine is installed (pip install -e '.[cpu]' or '.[light]')"
    return "vllm", "the light engine is not installed"

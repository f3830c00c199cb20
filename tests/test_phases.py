"""Start-up progress follows what the engine does: real start-up logs, fed line by line as they grow.

The logs in tests/data are whole, as the engines printed them on this project's CPU machine:
vLLM 0.32 eager (``--enforce-eager``), vLLM 0.32 compiled (no ``--enforce-eager``: about four minutes
of compiling on a busy 2-core machine) and llama.cpp (the light engine, ``VERBOSE=true``). Home
folders and keys are scrubbed. No engine runs here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixvllm_nb.display import progress_html, progress_text
from mixvllm_nb.process import logs

DATA = Path(__file__).parent / "data"

# What each engine does, in order, written out by hand from the logs (not derived from logs.PHASES).
EXPECTED = {
    "vllm_cpu_startup.log": [
        "launching", "importing", "resolving model", "starting engine", "loading weights",
        "allocating KV cache", "starting API", "ready",
    ],
    "vllm_cpu_startup_compiled.log": [
        "launching", "importing", "resolving model", "starting engine", "loading weights",
        "compiling", "allocating KV cache", "starting API", "ready",
    ],
    "llamacpp_startup.log": ["launching", "loading weights", "allocating KV cache", "starting API", "ready"],
}


def _replay(name: str) -> list[tuple[str, str]]:
    """Return (phase, line that changed it) each time the phase changes while the log grows line by line."""
    text, changes = "", [("launching", "")]
    for line in (DATA / name).read_text().splitlines(keepends=True):
        text += line
        if logs.phase(line) == "launching":
            continue  # a line that announces no phase cannot move the phase (and the whole log is 2,000 lines)
        reached = logs.phase(text)
        if reached != changes[-1][0]:
            changes.append((reached, line.strip()))
    return changes


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_real_startup_log_goes_through_the_phases_the_engine_went_through(name):
    changes = _replay(name)
    assert [phase for phase, _ in changes] == EXPECTED[name]
    fractions = [logs.phase_progress(phase) for phase, _ in changes]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(b > a for a, b in zip(fractions, fractions[1:], strict=False)), fractions  # never back, never stuck
    assert "Application startup complete" in changes[-1][1]


def test_eager_mode_never_shows_compiling_although_vllm_warns_about_torch_compile():
    """The bug: "Enforce eager set, disabling torch.compile, CUDAGraphs, and JIT kernel warmup" meant "compiling"."""
    text = (DATA / "vllm_cpu_startup.log").read_text()
    warning = next(line for line in text.splitlines() if "Enforce eager set" in line)
    assert logs.phase(text[: text.index(warning) + len(warning)]) == "resolving model"
    changes = dict(_replay("vllm_cpu_startup.log"))
    assert "Starting to load model" in changes["loading weights"]
    assert "KV cache" in changes["allocating KV cache"]


def test_the_compiled_start_spends_its_long_wait_in_compiling():
    """Without --enforce-eager most of the start-up is torch.compile: that is the phase shown meanwhile."""
    changes = dict(_replay("vllm_cpu_startup_compiled.log"))
    assert "Warming up model for the compilation" in changes["compiling"]
    assert "Explicitly set" in changes["allocating KV cache"]  # vLLM sizes the KV cache after compiling on a CPU


def test_llamacpp_phases_name_its_own_lines():
    changes = dict(_replay("llamacpp_startup.log"))
    assert changes["loading weights"].startswith("llama_model_loader:")
    assert changes["allocating KV cache"].startswith("llama_kv_cache: size")
    assert logs.kv_cache_report((DATA / "llamacpp_startup.log").read_text()).tokens == 2048


@pytest.mark.parametrize("name", ["v1_a100_40gb_llama31_8b_eager_len131072.json", "v1_rtx3090_qwen25_7b_util090.json",
                                  "v0_a10_llama31_8b_len131072.json"])
def test_gpu_log_lines_reach_loading_weights_then_the_kv_cache(name):
    """vLLM on GPUs words loading and KV sizing differently ("Model loading took", "Available KV cache memory")."""
    lines = json.loads((DATA / "gpu_logs" / name).read_text())["log_lines"]
    seen = []
    for n in range(1, len(lines) + 1):
        reached = logs.phase("\n".join(lines[:n]))
        if not seen or seen[-1] != reached:
            seen.append(reached)
    assert seen[-2:] == ["loading weights", "allocating KV cache"]


@pytest.mark.parametrize("state", ["stopped", "exited", "crashed"])
def test_an_ended_server_shows_no_progress_bar(state):
    """A stopped server next to a full blue bar reads as "ready"."""
    assert "width:100%" in progress_html("srv", "ready")
    shown = progress_html("srv", state, "see %vllm_logs")
    assert state in shown and "width:" not in shown and "see %vllm_logs" in shown
    assert progress_text("srv", "ready").startswith("srv: [####################] ready")
    assert progress_text("srv", state) == f"srv: {state}"
    assert logs.phase_progress(state) == 0.0


def test_a_failed_start_names_the_root_cause_not_vllms_closing_wrapper():
    """vLLM ends a failed start with "Engine core initialization failed. See root cause above."; the cause is earlier.

    The log is a real one: the embedded model as a Ray job with ``--pipeline-parallel-size 2
    --distributed-executor-backend ray`` across two local Ray nodes, which vLLM's CPU build refuses.
    """
    from mixvllm_nb.process.logs import failure_cause

    text = (DATA / "vllm_cpu_ray_executor_failure.log").read_text()
    assert "RuntimeError: Engine core initialization failed. See root cause above." in text
    assert failure_cause(text) == "ValueError: current platform cpu does not support ray."

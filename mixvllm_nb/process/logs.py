"""Read a server's log: its tail, the start-up phase it has reached, the KV cache it allocated, and
the one-line cause of a failure."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Start-up phases, each with the log lines that announce it (vLLM's and llama.cpp's). Engines go
# through them in this order but may skip some: eager mode compiles nothing and captures no CUDA
# graphs; llama.cpp imports no vLLM and compiles nothing. On a CPU, vLLM compiles *before* it sizes
# the KV cache ("Warming up model for the compilation", then "Explicitly set ... for KV cache"); on a
# GPU it compiles during its profile run, sizes the KV cache, then captures CUDA graphs. The patterns
# quote vLLM's own log calls (0.32: v1/engine/core.py, v1/worker/*, compilation/*): a loose word
# such as "warm" or "torch.compile" also matches the early warning "Enforce eager set, disabling
# torch.compile, CUDAGraphs, and JIT kernel warmup", which is how start-up once showed
# "compiling" from 11 s until ready.
PHASES: list[tuple[str, re.Pattern[str]]] = [
    ("importing", re.compile(r"non-default args|vLLM API server version|version \d+\.\d+\.\d+")),
    ("resolving model", re.compile(r"Resolved architecture|Using max model len")),
    ("starting engine", re.compile(r"Initializing an? (?:V1 )?LLM engine|\(EngineCore\w* pid=")),
    ("loading weights", re.compile(
        r"Starting to load model|Loading safetensors|Loading weights took|Loading model weights took|"
        r"Model loading took|llama_model_loader: loaded|load_tensors:")),
    ("compiling", re.compile(
        r"Warming up model for the compilation|Starting torch\.compile|Dynamo bytecode transform time|"
        r"Compiling a graph for|Directly load (?:the compiled graph|AOT compilation)|torch\.compile took")),
    ("allocating KV cache", re.compile(
        r"KV cache size:|Explicitly set .* for KV cache|Available KV cache memory|# (?:GPU|CUDA) blocks:|"
        r"llama_kv_cache(?:_unified)?: size")),
    ("capturing CUDA graphs", re.compile(r"Capturing CUDA graphs|Graph capturing finished")),
    ("starting API", re.compile(
        r"init engine \(profile, create kv cache|Starting vLLM (?:API )?server|Available routes|"
        r"Started server process")),
    ("ready", re.compile(r"Application startup complete")),
]
PHASE_NAMES = ["launching"] + [name for name, _ in PHASES]

_KV_RE = re.compile(r"KV cache size: ([\d,]+) tokens")
_CONCURRENCY_RE = re.compile(
    r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x"
)
# llama.cpp: "llama_kv_cache: size =   45.00 MiB (  2048 cells,  30 layers,  1/1 seqs), ..."
_LLAMA_KV_RE = re.compile(r"llama_kv_cache(?:_unified)?: size = .*?\(\s*(\d+) cells, .*?(\d+)/(\d+) seqs\)")
# Terminal colour codes (CSI sequences such as "\x1b[32m", OSC titles): vLLM colours its log when
# FORCE_COLOR or VLLM_LOGGING_COLOR=1 is set, or it believes it writes to a terminal; uvicorn too.
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
# A stop's first message: vLLM 0.32 tags each shutdown step "[shutdown]"; uvicorn (llama.cpp too) says "Shutting down".
_SHUTDOWN_RE = re.compile(r"\[shutdown\]|^INFO:\s+Shutting down", re.MULTILINE)
_ERROR_RE = re.compile(r"^(?:\S+ )?(?:[A-Za-z_.]+\.)?([A-Z]\w*(?:Error|Exception)|Exit\w*): (.+)$")


@dataclass(frozen=True)
class KVCacheReport:
    """What vLLM reported for its KV cache: capacity in tokens, and max concurrency."""

    tokens: int
    max_model_len: int | None = None
    max_concurrency: float | None = None

    def __str__(self) -> str:
        if self.max_concurrency is None:
            return f"{self.tokens:,} tokens"
        return (
            f"{self.tokens:,} tokens, max concurrency {self.max_concurrency:.2f}x "
            f"at {self.max_model_len:,} tokens"
        )


def tail(path: str | Path | None, lines: int = 40, max_bytes: int = 256 * 1024) -> str:
    """Return the last ``lines`` lines of a log file as a person reads them: no colour codes ('' when missing).

    Only the file's end is read.
    """
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    text = strip_ansi(data.decode("utf-8", errors="replace")).replace("\r", "\n")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def strip_ansi(text: str) -> str:
    """Return ``text`` without terminal colour and control sequences."""
    return _ANSI_RE.sub("", text)


def fold_shutdown(text: str) -> str:
    """Return a stopped server's log with everything from its first shutdown message on folded into one line.

    After a stop the user asked for, vLLM logs twenty "[shutdown]" steps and the interpreter's
    teardown reports (nanobind's leaked objects, resource_tracker warnings): noise, not news.
    """
    match = _SHUTDOWN_RE.search(text)
    if match is None:
        return text
    start = text.rfind("\n", 0, match.start()) + 1
    hidden = len(text[start:].splitlines())
    return f"{text[:start]}[{hidden} lines of shutdown messages hidden; the log file has them all]"


def read_text(path: str | Path | None) -> str:
    """Return the whole log ('' when missing)."""
    if not path:
        return ""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def phase(text: str) -> str:
    """Return the furthest start-up phase the log shows (``launching`` when it shows none).

    The furthest, not the latest line's: on a GPU vLLM compiles again for fixed batch sizes after
    sizing the KV cache, and the progress shown must never go back.
    """
    reached = "launching"
    for name, pattern in PHASES:
        if pattern.search(text):
            reached = name
    return reached


def phase_progress(name: str) -> float:
    """Return how far along start-up phase ``name`` is, from 0 to 1 (0 for an ended state such as ``stopped``)."""
    return PHASE_NAMES.index(name) / (len(PHASE_NAMES) - 1) if name in PHASE_NAMES else 0.0


def kv_cache_report(text: str) -> KVCacheReport | None:
    """Return the KV cache capacity the engine logged (vLLM, or llama.cpp's), or None before it has."""
    kv = _KV_RE.findall(text)
    if not kv:
        llama = _LLAMA_KV_RE.findall(text)
        if not llama:
            return None
        cells, _, sequences = (int(n) for n in llama[-1])
        # llama.cpp holds one context of n_ctx cells per sequence slot: one request at a time.
        return KVCacheReport(cells, cells // sequences, float(sequences))
    concurrency = _CONCURRENCY_RE.findall(text)
    tokens = int(kv[-1].replace(",", ""))
    if concurrency:
        max_len, factor = concurrency[-1]
        return KVCacheReport(tokens, int(max_len.replace(",", "")), float(factor))
    return KVCacheReport(tokens)


def failure_cause(text: str) -> str:
    """Return the most telling error line of a failed start, or '' when there is none."""
    if "No module named 'vllm'" in text:  # the engine's Python has no vLLM: say it in those words
        return ("vLLM is not installed in the Python that runs the server (on a Ray cluster: cluster.python; install "
                "it on the nodes, name a Python that has it, or add it to cluster.runtime_env's pip)")
    candidates = [m for line in text.splitlines() if (m := _ERROR_RE.match(line.strip()))]
    # vLLM ends with "Engine core initialization failed. See root cause above.": the cause is the error before it.
    causes = [m for m in candidates if "root cause above" not in m.group(2)]
    candidates = causes or candidates
    if candidates:
        kind, message = candidates[-1].groups()
        return f"{kind}: {message.strip()}"[:400]
    for line in reversed(text.splitlines()):
        if "ERROR" in line:
            return line.split("]", 1)[-1].strip()[:400]
    return ""


def follow(path: str, still_running: Callable[[], bool], *, poll: float = 0.3) -> Iterator[str]:
    """Yield what is appended to a log from now on, until ``still_running()`` says the server ended."""
    with open(path, errors="replace") as handle:
        handle.seek(0, 2)
        while True:
            chunk = handle.read()
            if chunk:
                yield chunk
            elif not still_running():
                return
            else:
                time.sleep(poll)

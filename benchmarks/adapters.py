"""Switching a LoRA adapter: loading it into a running vLLM server against restarting a server with it at launch.

Both paths end at the same point: the adapter's first answer. "switch": a running vLLM CPU server with LoRA
on loads a new adapter (``mixvllm_nb.adapters.load_adapter``, vLLM's ``/v1/load_lora_adapter``) and answers
one chat request with ``model=<adapter>``; the adapter is unloaded after the clock stops. "restart": a new
server is started with the adapter in ``lora.modules`` (``--lora-modules``), waited for, and answers the same
request; it is stopped after the clock stops. The adapters are rank-8 peft adapters on q_proj/v_proj for the
embedded SmolLM2, made here with non-zero random weights (no training: the load does not depend on the values).
Target: switching at least 30x faster. Result: results/adapters.json.

    .venv/bin/python benchmarks/adapters.py [--switches 5] [--restarts 2] [--max-tokens 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MIXVLLM_STATE_DIR", tempfile.mkdtemp(prefix="mixvllm-bench-"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import save  # noqa: E402

from mixvllm_nb.adapters import load_adapter, unload_adapter  # noqa: E402
from mixvllm_nb.api import server_for_config  # noqa: E402
from mixvllm_nb.client import openai_client  # noqa: E402
from mixvllm_nb.config import ServeConfig  # noqa: E402
from mixvllm_nb.models import resolve_default_model  # noqa: E402

TARGET = 30.0
# Writes one adapter per folder given: LoRA's B matrices start at zero in peft, so init_lora_weights=False
# gives random non-zero ones (an adapter that changes the answers, as a trained one would).
MAKE = """
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
for seed, out in enumerate(sys.argv[2:]):
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(out)
"""


def config(name: str, modules: dict[str, str] | None = None) -> ServeConfig:
    return ServeConfig.model_validate({
        "backend": "vllm", "server": {"name": name},
        "lora": {"enabled": True, "max_lora_rank": 8, "modules": modules or {}},
    })


def first_answer(server: Any, model: str, max_tokens: int) -> str:
    """Return the first answer of ``model`` on ``server`` (one non-streamed chat request)."""
    reply = openai_client(server.base_url, server.api_key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], temperature=0, max_tokens=max_tokens)
    return reply.choices[0].message.content or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=5, help="adapters loaded into the running server")
    parser.add_argument("--restarts", type=int, default=2, help="servers started with an adapter")
    parser.add_argument("--max-tokens", type=int, default=8, help="length of the first answer")
    args = parser.parse_args()

    base = resolve_default_model().model
    workdir = Path(tempfile.mkdtemp(prefix="mixvllm-bench-adapters-"))
    folders = [workdir / f"adapter{i}" for i in range(args.switches + args.restarts)]
    print(f"making {len(folders)} adapters ...", flush=True)
    subprocess.run([sys.executable, "-c", MAKE, base, *map(str, folders)], check=True)

    samples: dict[str, dict[str, list[float]]] = {"switch (load + first answer)": {"seconds": [], "load_s": [],
                                                                                   "next_answer_s": []},
                                                  "restart with --lora-modules": {"seconds": []}}
    print("starting the running server ...", flush=True)
    server = server_for_config(config("bench-lora")).start()
    try:
        first_answer(server, server.served_model_name, args.max_tokens)  # warm: the base model's first request
        for i in range(args.switches):
            name = f"switch{i}"
            start = time.perf_counter()
            load_adapter(server, name, folders[i])
            loaded = time.perf_counter()
            first_answer(server, name, args.max_tokens)
            samples["switch (load + first answer)"]["seconds"].append(time.perf_counter() - start)
            samples["switch (load + first answer)"]["load_s"].append(loaded - start)
            start = time.perf_counter()
            first_answer(server, name, args.max_tokens)  # the same request again: what the answer itself costs
            samples["switch (load + first answer)"]["next_answer_s"].append(time.perf_counter() - start)
            unload_adapter(server, name)
            print(f"switch {i}: {samples['switch (load + first answer)']['seconds'][-1]:.2f} s", flush=True)
    finally:
        server.stop()
    for i in range(args.restarts):
        name = f"restart{i}"
        start = time.perf_counter()
        fresh = server_for_config(config(f"bench-lora-{i}", {name: str(folders[args.switches + i])})).start()
        try:
            first_answer(fresh, name, args.max_tokens)
            samples["restart with --lora-modules"]["seconds"].append(time.perf_counter() - start)
        finally:
            fresh.stop()
        print(f"restart {i}: {samples['restart with --lora-modules']['seconds'][-1]:.1f} s", flush=True)

    switch = statistics.median(samples["switch (load + first answer)"]["seconds"])
    restart = statistics.median(samples["restart with --lora-modules"]["seconds"])
    speedup = restart / switch
    path = save(
        "adapters",
        what="a new LoRA adapter's first answer: loaded into the running vLLM server vs a server restarted with it",
        result=f"switch {switch:.2f} s vs restart {restart:.1f} s (median): {speedup:.0f}x faster "
               f"(target >= {TARGET:.0f}x: {'met' if speedup >= TARGET else 'not met'})",
        samples=samples, parameters=vars(args),
        extra={"speedup": round(speedup, 1), "target": TARGET, "target_met": speedup >= TARGET},
    )
    print(f"switch {switch:.2f} s, restart {restart:.1f} s: {speedup:.0f}x; saved {path}")


if __name__ == "__main__":
    main()

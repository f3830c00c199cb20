"""binder/ does what the README's setup does, and the quickstart runs in what it builds.

mybinder.org runs ``binder/postBuild`` in a fresh Python 3.11 environment. Here the same file runs
in a fresh venv (its ``python`` first on PATH, as on Binder), then the quickstart notebook is
executed top to bottom in that venv against a Jupyter server from it: the light engine, no vLLM, no
torch. Binder's 1-2 GB limit is not enforced here; ``benchmarks/quickstart_memory.py`` measures it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from test_server_support import JupyterProcess, wait_for_no_records

pytestmark = pytest.mark.vllm  # a real engine in every test

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def _commands(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#") and not line.startswith("set ")]


def test_binder_runs_the_readme_setup_with_the_light_engine():
    assert os.access(BINDER / "postBuild", os.X_OK)
    assert _commands(BINDER / "postBuild") == ["MIXVLLM_PYTHON=python bash scripts/setup.sh --light"]
    # Binder builds with runtime.txt's Python: the package must accept it (pip reads Requires-Python).
    version = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    required = importlib.metadata.metadata("mixvllm-nb")["Requires-Python"]
    assert Version(version) in SpecifierSet(required), (version, required)
    make = (ROOT / "Makefile").read_text()
    assert "bash scripts/setup.sh" in make  # the README's two commands use the same script
    readme = (ROOT / "README.md").read_text()
    assert "mybinder.org/v2/gh/" in readme and "urlpath=lab/tree/notebooks/01_quickstart.ipynb" in readme


def test_postbuild_in_a_fresh_venv_runs_the_quickstart_on_llamacpp(tmp_path):
    venv = tmp_path / "binder-env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MIXVLLM_BACKEND")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    build = subprocess.run(["bash", str(BINDER / "postBuild")], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=1500)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    python = str(bin_dir / "python")
    probe = ("import importlib.util as u, json; from mixvllm_nb.backends.auto import choose_engine; "
             "print(json.dumps({'missing': [m for m in ('vllm', 'torch') if u.find_spec(m)], "
             "'engine': choose_engine()}))")
    facts = json.loads(subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True,
                                      check=True).stdout)
    assert facts == {"missing": [], "engine": ["llamacpp", "vLLM is not installed"]}
    extensions = subprocess.run([python, "-m", "jupyter", "server", "extension", "list"], env=env,
                                capture_output=True, text=True, check=True)
    listing = re.sub(r"\x1b\[\d+m", "", extensions.stdout + extensions.stderr)  # no colours
    assert re.search(r"mixvllm_nb\s+enabled", listing), listing

    # The quickstart, top to bottom, in that venv, with a Jupyter server of that venv for its proxy cell.
    state = tmp_path / "state"
    run_env = {**env, "MIXVLLM_STATE_DIR": str(state)}
    jupyter = JupyterProcess(ROOT / "notebooks", tmp_path / "jupyter", python=python)
    jupyter.env = {**run_env, **{k: v for k, v in jupyter.env.items() if k.startswith("JUPYTER_")}}
    jupyter.start()
    try:
        out = tmp_path / "quickstart-run.ipynb"
        executed = subprocess.run(
            [python, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output", str(out),
             "--ExecutePreprocessor.timeout=600", str(ROOT / "notebooks" / "01_quickstart.ipynb")],
            env={**run_env, "JUPYTER_SERVER_URL": jupyter.url, "JUPYTER_TOKEN": jupyter.token},
            capture_output=True, text=True, timeout=900)
    finally:
        jupyter.stop()
    assert executed.returncode == 0, executed.stderr[-4000:]
    text = "\n".join(
        "".join(o.get("text", "")) for cell in json.loads(out.read_text())["cells"] for o in cell.get("outputs", []))
    assert "on llama.cpp (vLLM is not installed)" in text, text[:3000]
    assert "Paris" in text, text[-3000:]
    # The quickstart leaves its server running; it stops with the notebook's kernel, which nbconvert shut down.
    leftovers = wait_for_no_records(state)
    assert leftovers == [], [p.read_text() for p in leftovers]

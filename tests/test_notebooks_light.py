"""Every walkthrough notebook runs top to bottom on the light engine, as on mybinder.org.

nbval runs the notebooks on vLLM (``notebooks/``); here each one runs again with
``MIXVLLM_BACKEND=llamacpp`` (what ``backend: auto`` picks on Binder), beside a real Jupyter server,
in a registry of its own. The vLLM-only parts must say so plainly instead of failing.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_server_support import JupyterProcess, wait_for_no_records

pytestmark = pytest.mark.vllm  # a real engine in every test

ALL_NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
NEEDS_VLLM = "**Needs vLLM**"  # a notebook about what only vLLM does (LoRA adapters) says so in its first cell


def _first_cell(path: Path) -> str:
    return nbformat.read(path, as_version=4).cells[0].source


NOTEBOOKS = [path for path in ALL_NOTEBOOKS if NEEDS_VLLM not in _first_cell(path)]


@pytest.fixture(scope="module")
def light_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("light-notebooks")
    saved = dict(os.environ)
    os.environ.update({"MIXVLLM_BACKEND": "llamacpp", "MIXVLLM_STATE_DIR": str(home / "state")})
    jupyter = JupyterProcess(NOTEBOOKS[0].parent, home).start()  # its proxy reads the same registry
    os.environ.update({"JUPYTER_SERVER_URL": jupyter.url, "JUPYTER_TOKEN": jupyter.token})
    try:
        yield home / "state"
    finally:
        jupyter.stop()
        os.environ.clear()
        os.environ.update(saved)


def _text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_only_notebooks_about_vllm_only_features_are_left_out_and_they_say_why():
    left_out = {path.stem: _first_cell(path) for path in ALL_NOTEBOOKS if path not in NOTEBOOKS}
    assert list(left_out) == ["09_lora_adapters", "10_ray_cluster"]
    assert all("llama.cpp engine" in text and "serves no" in text for text in left_out.values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_the_light_engine(path, light_env):
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    text = _text(notebook)
    if "%vllm_serve" in "".join(cell.source for cell in notebook.cells):
        assert "on llama.cpp" in text  # it says which engine ran
    # Every server it started is gone: stopped by the notebook, or (the quickstart's) with its kernel.
    assert wait_for_no_records(light_env) == []

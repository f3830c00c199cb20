"""Notebook runs (nbval) get what JupyterLab gives a notebook: a real Jupyter server with this extension.

A notebook reaches the authenticated proxy, the servers API and the chat terminals through the
Jupyter server that runs its kernel. Under nbval the kernel has none, so before the first notebook
starts its kernel one ``jupyter server`` is started (loopback, random token, root ``notebooks/``)
and ``JUPYTER_SERVER_URL`` / ``JUPYTER_TOKEN`` are exported: the kernels inherit them, and
``mixvllm_nb.extension.from_kernel.find_jupyter_server`` reads them. It is stopped when the session ends.

The notebooks' vLLM run runs vLLM: ``$MIXVLLM_BACKEND=vllm`` is set for it, so that ``backend: auto`` cannot
pick llama.cpp on a small machine and let the vLLM-only cells print "skipped" and pass; where vLLM cannot run,
the serve cells fail and say why. ``tests/test_notebooks_light.py`` runs every notebook on llama.cpp.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
ENGINE_ENV = "MIXVLLM_BACKEND"  # mixvllm_nb.backends.auto.ENGINE_ENV, not imported before the tests' state dir is set
_jupyter = None


@pytest.hookimpl(tryfirst=True)  # before nbval starts the notebook's kernel, which copies os.environ
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _jupyter
    if not str(item.path).endswith(".ipynb"):
        return
    engine = os.environ.get(ENGINE_ENV, "auto")
    if engine not in ("auto", "vllm"):
        pytest.fail(f"${ENGINE_ENV}={engine}: the notebooks' run is on vLLM (tests/test_notebooks_light.py runs "
                    "them on llama.cpp); unset it", pytrace=False)
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("the notebooks' run is on vLLM, and vLLM is not installed here (bash scripts/setup.sh "
                    "installs it; tests/test_notebooks_light.py runs the notebooks on llama.cpp)", pytrace=False)
    os.environ[ENGINE_ENV] = "vllm"  # before the kernel (and the Jupyter server) copy the environment
    if _jupyter is not None:
        return
    from test_server_support import JupyterProcess

    home = Path(tempfile.mkdtemp(prefix="mixvllm-nbval-jupyter-"))
    _jupyter = JupyterProcess(_NOTEBOOKS, home).start()
    os.environ["JUPYTER_SERVER_URL"] = _jupyter.url
    os.environ["JUPYTER_TOKEN"] = _jupyter.token


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _jupyter is not None:
        _jupyter.stop()
        for name in ("JUPYTER_SERVER_URL", "JUPYTER_TOKEN", ENGINE_ENV):
            os.environ.pop(name, None)
        shutil.rmtree(_jupyter.runtime_dir.parent, ignore_errors=True)

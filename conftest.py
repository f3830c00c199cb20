"""Notebook runs (nbval) get what JupyterLab gives a notebook: a real Jupyter server with this extension.

A notebook reaches the authenticated proxy, the servers API and the chat terminals through the
Jupyter server that runs its kernel. Under nbval the kernel has none, so before the first notebook
starts its kernel one ``jupyter server`` is started (loopback, random token, root ``notebooks/``)
and ``JUPYTER_SERVER_URL`` / ``JUPYTER_TOKEN`` are exported: the kernels inherit them, and
``mixvllm_nb.extension.from_kernel.find_jupyter_server`` reads them. It is stopped when the session ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
_jupyter = None


@pytest.hookimpl(tryfirst=True)  # before nbval starts the notebook's kernel, which copies os.environ
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _jupyter
    if _jupyter is not None or not str(item.path).endswith(".ipynb"):
        return
    from test_server_support import JupyterProcess

    home = Path(tempfile.mkdtemp(prefix="mixvllm-nbval-jupyter-"))
    _jupyter = JupyterProcess(_NOTEBOOKS, home).start()
    os.environ["JUPYTER_SERVER_URL"] = _jupyter.url
    os.environ["JUPYTER_TOKEN"] = _jupyter.token


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _jupyter is not None:
        _jupyter.stop()
        for name in ("JUPYTER_SERVER_URL", "JUPYTER_TOKEN"):
            os.environ.pop(name, None)
        shutil.rmtree(_jupyter.runtime_dir.parent, ignore_errors=True)

"""Shared fixtures: an isolated registry, and one real vLLM CPU server for the whole session.

Starting vLLM costs ~35 s on this CPU, so every test that only needs *a* server uses
``vllm_server``; tests of the lifecycle itself (crash, stop, watchdog) start their own.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psutil
import pytest

# Before anything imports mixvllm_nb: tests never touch the user's registry, and child
# processes (kernels, Jupyter, the CLI) inherit the same isolated state dir.
_STATE = tempfile.mkdtemp(prefix="mixvllm-test-state-")
os.environ["MIXVLLM_STATE_DIR"] = _STATE
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mixvllm_nb.config import ServeConfig  # noqa: E402

pytest_plugins = ["pytest_jupyter.jupyter_server"]

# The quickstart notebook serves with the same defaults, so under the test suite it reuses this server.
SHARED_GENERATION_DEFAULTS = {"temperature": 0.0, "max_tokens": 64}


def shared_config() -> ServeConfig:
    """Return the config of the session's shared server (magics tests reuse it by identity)."""
    return ServeConfig.model_validate(
        {
            "server": {"name": "shared"},
            "generation_defaults": SHARED_GENERATION_DEFAULTS,
            "heartbeat_interval": 1.0,
        }
    )


# Tests that need a real engine (vLLM's CPU server, llama.cpp) or its stack carry the ``vllm`` marker:
# `pytest -m "not vllm"` is the fast layer. Whole modules say so with ``pytestmark``; elsewhere a test
# that takes the shared server (or its client) is marked here, so that no such test can be missed.
ENGINE_FIXTURES = {"vllm_server", "openai_client"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def ip():
    """IPython's in-process shell with the magics loaded (one per session: IPython keeps a global one)."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "mixvllm_nb")
    return shell


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    """A real ``jupyter server`` process with this extension, for one test module (blocking clients: openai, httpx)."""
    from test_server_support import JupyterProcess

    home = tmp_path_factory.mktemp("jupyter-home")
    root = home / "root"
    root.mkdir()
    process = JupyterProcess(root, home).start()
    yield process
    process.stop()


@pytest.fixture
def jupyter_overrides() -> dict:
    """Extra Jupyter config for one test (parametrize it: an authorizer, MixVLLM limits)."""
    return {}


@pytest.fixture
def jp_server_config(jupyter_overrides):
    """pytest-jupyter's in-process Jupyter server, with this extension and Jupyter's terminals on."""
    from traitlets.config import Config

    config = Config({"ServerApp": {"jpserver_extensions": {"mixvllm_nb": True, "jupyter_server_terminals": True}}})
    config.merge(Config(jupyter_overrides))
    return config


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return Path(_STATE)


@pytest.fixture(scope="session")
def vllm_server():
    """A real vLLM server (CPU build) with the embedded SmolLM2, shared by the session."""
    from mixvllm_nb.api import server_for_config

    server = server_for_config(shared_config())
    server.start()
    yield server
    report = server.stop()
    assert report.clean, report.summary()


@pytest.fixture(scope="session")
def openai_client(vllm_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{vllm_server.base_url}/v1", api_key=vllm_server.api_key)


def marked_alive(marker: str | None) -> list[int]:
    """Return pids still alive that carry a server's marker (should be none after a stop)."""
    from mixvllm_nb.process.tree import marked_processes

    return [p.pid for p in marked_processes(marker)] if marker else []


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []

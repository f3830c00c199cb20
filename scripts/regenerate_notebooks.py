"""Regenerate the walkthrough notebooks' outputs: run each top to bottom, as JupyterLab would, and save it.

    python scripts/regenerate_notebooks.py [notebooks/01_quickstart.ipynb ...]   (default: every notebook)

Each notebook runs in a real kernel beside a real Jupyter server with this extension (its proxy and
terminal cells need one), on vLLM, with a registry of its own (the user's servers are not touched).
Outputs are the run's, unedited, except that this machine's home and temporary folders are written as
``~`` and ``/tmp/...`` so that they read the same on GitHub. Nothing is left running afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def scrub(text: str, state_dir: str) -> str:
    """Return ``text`` with this machine's home and temporary folders in portable form."""
    text = text.replace(state_dir, "<state dir>")
    text = text.replace(str(Path.home()), "~")
    return re.sub(r"/tmp/[A-Za-z0-9_.-]+", "/tmp/...", text)


def scrub_outputs(notebook: dict, state_dir: str) -> None:
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = scrub("".join(output["text"]) if isinstance(output["text"], list)
                                       else output["text"], state_dir)
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") or mime == "application/json":
                    output["data"][mime] = scrub("".join(value) if isinstance(value, list) else value, state_dir) \
                        if isinstance(value, str | list) else value


def run(path: Path, timeout: int) -> float:
    """Execute one notebook in place and return the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    started = time.monotonic()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    scrub_outputs(notebook, os.environ["MIXVLLM_STATE_DIR"])
    nbformat.write(notebook, path)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds a cell may take")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    state = tempfile.mkdtemp(prefix="mixvllm-regenerate-")
    os.environ.update({"MIXVLLM_STATE_DIR": state, "MIXVLLM_BACKEND": "vllm", "HF_HUB_OFFLINE": "1"})
    sys.path.insert(0, str(ROOT / "tests"))
    from test_server_support import JupyterProcess  # the suite's real Jupyter server, as nbval runs use

    from mixvllm_nb.api import list_servers, stop_server
    from mixvllm_nb.errors import MixVLLMError

    jupyter = JupyterProcess(NOTEBOOKS, Path(tempfile.mkdtemp(prefix="mixvllm-regenerate-jupyter-"))).start()
    os.environ.update({"JUPYTER_SERVER_URL": jupyter.url, "JUPYTER_TOKEN": jupyter.token})
    failed = []
    try:
        for path in paths:
            try:
                print(f"{path.name}: {run(path.resolve(), args.timeout):.0f} s", flush=True)
            except Exception as exc:  # one failing notebook must not keep the others from regenerating
                failed.append(path.name)
                print(f"{path.name}: FAILED: {str(exc).splitlines()[-1] if str(exc) else type(exc).__name__}")
    finally:
        try:
            for view in list_servers():
                try:
                    print(stop_server(view["name"], force=True))
                except MixVLLMError as exc:  # one that cannot be stopped must not keep Jupyter running
                    print(f"{view['name']}: {exc}")
        finally:
            jupyter.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The ipywidgets control panel: ``mixvllm_nb.panel.panel()`` or ``%vllm_panel [NAME]`` in a notebook.

Launch a server (with the planner's memory estimate), watch its memory, KV cache and load, move
the sampling sliders, chat with streamed answers and follow its log, without typing code.
"""

from __future__ import annotations

from .app import ControlPanel
from .errors import in_notebook_kernel
from .throttle import Throttle

__all__ = ["ControlPanel", "Throttle", "panel"]

NEEDS_FRONTEND = (
    "mixvllm_nb.panel needs a notebook frontend (JupyterLab, Notebook 7, VS Code): widgets cannot "
    "be shown in a terminal. Use the %vllm_serve / %vllm_status / %vllm_chat magics, or mixvllm-chat."
)


def panel(name: str | None = None) -> ControlPanel | None:
    """Return the control panel (shown when it ends a cell), bound to server ``name`` or the newest.

    Outside a Jupyter kernel (a terminal IPython, plain Python) it prints that a notebook
    frontend is needed and returns None.
    """
    if not in_notebook_kernel():
        print(NEEDS_FRONTEND)
        return None
    return ControlPanel(name)

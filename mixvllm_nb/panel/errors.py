"""Errors of the panel's callbacks and threads: shown in red in the panel, and given to IPython.

A widget callback that raises would otherwise go to JupyterLab's log console, where nobody looks.
"""

from __future__ import annotations

import functools
import html
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import ipywidgets as widgets

from ..errors import MixVLLMError, ServerStartError

log = logging.getLogger("mixvllm_nb.panel")
F = TypeVar("F", bound=Callable[..., Any])

ERROR_STYLE = "color:#cf222e"


def get_shell() -> Any:
    """Return the running IPython shell, or None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    return get_ipython()


def in_notebook_kernel() -> bool:
    """Return True inside a Jupyter kernel, where a frontend can render widgets."""
    shell = get_shell()
    # isinstance, not the class name: Colab's and others' shells subclass ipykernel's.
    zmqshell = sys.modules.get("ipykernel.zmqshell")
    return shell is not None and zmqshell is not None and isinstance(shell, zmqshell.ZMQInteractiveShell)


class ErrorBox(widgets.HTML):
    """A red message with optional details (a log tail); empty when all is well."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_class("mixvllm-error")
        self.message = ""

    def show(self, message: str, detail: str = "") -> None:
        """Show ``message`` in red, with ``detail`` (e.g. the server log's tail) below it."""
        self.message = message
        body = f"<div style='{ERROR_STYLE};font-weight:600;white-space:pre-wrap'>{html.escape(message)}</div>"
        if detail:
            body += (f"<pre style='{ERROR_STYLE};font-size:11px;max-height:220px;overflow:auto;"
                     f"white-space:pre-wrap'>{html.escape(detail)}</pre>")
        self.value = body

    def clear(self) -> None:
        """Hide the message."""
        self.message = ""
        self.value = ""


def report(box: ErrorBox, exc: BaseException) -> None:
    """Show ``exc`` in ``box`` and hand it to IPython's ``showtraceback`` when a shell exists.

    The project's own errors (a bad config value, a server that died while starting) are shown
    to IPython as a one-line UsageError, as the magics do; anything else with its traceback.
    """
    detail = exc.log_tail if isinstance(exc, ServerStartError) else ""
    box.show(f"{type(exc).__name__}: {exc}", detail)
    shell = get_shell()
    if shell is None:
        log.error("panel callback failed", exc_info=(type(exc), exc, exc.__traceback__))
        return
    try:
        if isinstance(exc, MixVLLMError):
            from IPython.core.error import UsageError

            shell.showtraceback((UsageError, UsageError(str(exc)), None))
        else:
            shell.showtraceback((type(exc), exc, exc.__traceback__))
    except Exception:  # showing an error must never raise a second one
        log.exception("showtraceback failed")


def guarded(box: ErrorBox) -> Callable[[F], F]:
    """Return a decorator: the wrapped callback's exceptions land in ``box`` (and IPython)."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                report(box, exc)
                return None

        return wrapper  # type: ignore[return-value]

    return decorate


def start_thread(box: ErrorBox, target: Callable[[], None], name: str) -> threading.Thread:
    """Run ``target`` in a daemon thread whose exceptions land in ``box``: the kernel never waits."""

    def run() -> None:
        try:
            target()
        except Exception as exc:
            report(box, exc)
        except BaseException:  # e.g. SystemExit in a thread: still say so, then let it go
            box.show(f"{name} stopped: {sys.exc_info()[0].__name__}")
            raise

    thread = threading.Thread(target=run, name=f"mixvllm-panel-{name}", daemon=True)
    thread.start()
    return thread

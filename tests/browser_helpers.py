"""Drive a real JupyterLab in headless Chromium: start Lab on localhost, open a notebook, clean up.

JupyterLab traps (see docs/FINDINGS.md): the toolbar's "New Launcher" button also
matches "Launch" (use exact names), a kernel-choice dialog can cover the page at first load,
and a "Jupyter news" toast appears bottom right (we turn news off in Lab's settings instead).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_notebook(path: Path, cells: list[str]) -> None:
    """Write a notebook whose metadata names the python3 kernel (no kernel-choice dialog)."""
    notebook = {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [{"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "source": source,
                   "outputs": [], "execution_count": None} for i, source in enumerate(cells)],
    }
    path.write_text(json.dumps(notebook, indent=1))


@dataclass
class JupyterLab:
    """A JupyterLab server started by a test; ``stop()`` leaves no process behind."""

    process: subprocess.Popen
    port: int
    token: str
    root: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> list[int]:
        """Shut kernels and Lab down (REST first, then signals); return pids that had to be killed."""
        tree = []
        try:
            tree = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            pass
        try:
            for kernel in self.api("/api/kernels") or []:  # type: ignore[union-attr]
                self.api(f"/api/kernels/{kernel['id']}", method="DELETE")
            self.api("/api/shutdown", method="POST")
            self.process.wait(timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        killed = []
        for child in tree:  # kernels run in their own sessions: a signal to Lab does not reach them
            try:
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    child.kill()
                    killed.append(child.pid)
            except psutil.Error:
                continue
        return killed


def start_jupyterlab(root: Path, *, extensions: tuple[str, ...] = (), timeout: float = 180) -> JupyterLab:
    """Start ``jupyter lab`` on a free localhost port with a random token; wait until it answers.

    ``extensions`` are server extensions to turn on (an editable install may lack their config file).
    """
    port, token = free_port(), secrets.token_hex(16)
    settings = root.parent / f"{root.name}-lab-settings"
    news = settings / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True, exist_ok=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                         "checkForUpdates": False}))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(settings / "workspaces"),
           "JUPYTER_TOKEN": token}  # in the environment: `ps` shows command lines
    log_path = root.parent / f"{root.name}-jupyterlab.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(VENV_BIN / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             f"--ServerApp.root_dir={root}",
             "--ServerApp.port_retries=0", *(["--allow-root"] if os.geteuid() == 0 else []),
             *(f"--ServerApp.jpserver_extensions={name}=True" for name in extensions)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=root,
        )
    lab = JupyterLab(process, port, token, root, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{lab.log()[-3000:]}")
        try:
            lab.api("/api/status")
            return lab
        except OSError:
            time.sleep(0.5)
    lab.stop()
    raise RuntimeError(f"jupyter lab did not answer within {timeout} s:\n{lab.log()[-3000:]}")


@contextmanager
def notebook_page(lab: JupyterLab, notebook: str, profile: Path) -> Iterator[Any]:
    """Open ``notebook`` in JupyterLab in a headless Chromium and yield the page; the browser closes after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 1000})
        try:
            page = context.new_page()
            page.goto(lab.notebook_url(notebook), timeout=120_000)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
            yield page
        finally:
            context.close()


def run_first_cell(page, shows, *, timeout: float = 120, cells: str = ".jp-Notebook .jp-Cell") -> None:
    """Run the notebook's first cell (of those ``cells`` selects) and wait until ``shows`` (a locator) is visible.

    Lab and Notebook 7 report the kernel "idle" before its websocket is connected, and a
    Shift+Enter pressed then is dropped: press it again while the cell's prompt still reads
    ``[ ]:``, never once it ran or is running (a second run would replace the output).
    """
    from playwright.sync_api import expect

    prompt = page.locator(f"{cells} .jp-InputPrompt").first
    deadline = time.monotonic() + timeout
    while True:
        dismiss_dialogs(page)
        page.locator(f"{cells} .cm-content").first.click()
        page.keyboard.press("Shift+Enter")
        try:
            expect(prompt).not_to_have_text("[ ]:", timeout=10_000)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    expect(shows).to_be_visible(timeout=max(1.0, deadline - time.monotonic()) * 1000)


def dismiss_dialogs(page) -> None:
    """Accept a kernel-choice dialog and close a news toast if either covers the page."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and dialog.first.is_visible():
        accept = dialog.locator("button.jp-mod-accept")
        if accept.count():
            accept.first.click()
    toast_no = page.locator(".jp-Notification-Toast-Close, .Toastify__close-button")
    for i in range(toast_no.count()):
        if toast_no.nth(i).is_visible():
            toast_no.nth(i).click()

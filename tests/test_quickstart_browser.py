"""The quickstart as a newcomer walks it: JupyterLab, Run All, then the panel it leaves (watch, chat, logs, terminal).

Real JupyterLab with the extension, headless Chromium, a real kernel and vLLM. It fails on what a newcomer would
stumble on: a traceback, a server stopped before the reader reaches the panel, a chat at the model's own sampling
instead of the notebook's, colour codes in the log, a terminal that does not open, a second copy of the model
loaded by the panel's Launch. Screenshots go to ``test-artifacts/quickstart-*.png`` (the README's come from here).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from browser_helpers import dismiss_dialogs, notebook_page, run_first_cell, start_jupyterlab

from mixvllm_nb.process import registry

pytestmark = pytest.mark.vllm  # a real engine in every test

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def _run_all(page) -> None:
    """Run > Run All Cells, from JupyterLab's menu bar, as a user does."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def test_run_all_on_the_quickstart_leaves_a_working_server_and_a_panel_that_works(tmp_path):
    from playwright.sync_api import expect

    root = tmp_path / "lab"
    root.mkdir()
    notebook = json.loads((ROOT / "notebooks" / "01_quickstart.ipynb").read_text())
    for cell in notebook["cells"]:  # a fresh run: "[ ]:" prompts tell when the kernel took the first cell
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (root / "01_quickstart.ipynb").write_text(json.dumps(notebook))
    ARTIFACTS.mkdir(exist_ok=True)
    before = {record.name for record in registry.list_records()}
    lab = start_jupyterlab(root, extensions=("mixvllm_nb",))
    try:
        with notebook_page(lab, "01_quickstart.ipynb", tmp_path / "chromium-profile") as page:
            code = ".jp-Notebook .jp-CodeCell"
            first_prompt = page.locator(f"{code} .jp-InputPrompt").first
            run_first_cell(page, first_prompt, cells=code)  # the kernel is connected once a cell has run
            dismiss_dialogs(page)
            _run_all(page)
            panel = page.locator(".mixvllm-panel")
            expect(panel).to_be_visible(timeout=600_000)
            expect(page.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(0, timeout=600_000)
            outputs = "\n".join(page.locator(".jp-OutputArea").all_inner_texts())
            assert "Traceback" not in outputs and "UsageError" not in outputs, outputs[-3000:]
            assert "The capital of France is Paris." in outputs  # the notebook's own chat, at temperature 0

            # The panel shows a live server: Run All no longer ends with a stop.
            state = panel.locator(".mixvllm-state")
            expect(state).to_contain_text("ready", timeout=60_000)
            name = state.inner_text().split()[-1]
            assert registry.get(name).state == "ready"
            panel.screenshot(path=str(ARTIFACTS / "quickstart-panel.png"))

            # Its chat answers at the notebook's sampling (temperature 0: the same answer as above).
            panel.get_by_role("tab", name="Chat", exact=True).click()
            panel.get_by_placeholder("Message").fill("What is the capital of France?")
            panel.get_by_role("button", name="Send", exact=True).click()
            answer = panel.locator(".mixvllm-transcript .mixvllm-answer").last
            expect(answer).to_contain_text("Paris", timeout=120_000)
            expect(panel.get_by_role("button", name="Send", exact=True)).to_be_enabled(timeout=60_000)
            panel.screenshot(path=str(ARTIFACTS / "quickstart-chat.png"))

            # A chat terminal opens for this server, named for it.
            panel.get_by_role("button", name="Chat in a terminal", exact=True).click()
            link = panel.get_by_role("link", name="open it")
            expect(link).to_be_visible(timeout=60_000)
            terminal = link.get_attribute("href").rstrip("/").rsplit("/", 1)[-1]
            assert terminal.endswith("_chat_1") and terminal in [t["name"] for t in lab.api("/api/terminals")]

            # The log reads as text: no colour codes.
            panel.get_by_role("tab", name="Logs", exact=True).click()
            log = panel.locator(".mixvllm-log")
            expect(log).to_contain_text("INFO", timeout=60_000)
            assert "\x1b[" not in log.inner_text() and "[0m" not in log.inner_text()

            # Launch starts from the notebook's sampling, so it reuses the running server.
            panel.get_by_role("tab", name="Launch", exact=True).click()
            expect(panel.locator(".mixvllm-sampling-note")).to_contain_text("temperature 0.0")
            panel.get_by_role("button", name="Launch", exact=True).click()
            expect(panel.locator(".mixvllm-outcome")).to_contain_text(f"Reused {name}", timeout=60_000)
            expect(panel.locator(".mixvllm-outcome")).to_contain_text("ready", timeout=60_000)
            panel.screenshot(path=str(ARTIFACTS / "quickstart-launch.png"))
            added = [r.name for r in registry.list_records() if r.name not in before]
            assert added == ([] if name in before else [name]), added  # one engine: no second copy
    finally:
        lab.stop()  # the kernel's server stops with it (the quickstart's last cell is optional)
    deadline = time.monotonic() + 60
    while (left := [r.name for r in registry.list_records() if r.name not in before]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], left

"""The control panel in a real browser: JupyterLab on localhost, headless Chromium, one real vLLM launch.

``%load_ext mixvllm_nb`` and ``%vllm_panel`` in a notebook; load a YAML file, click Launch, wait for
ready, ask "What is the capital of France?", watch the answer stream in (more than one step), click
Stop and see the state change; then the same panel in Notebook 7's UI. Screenshots go to ``test-artifacts/`` (panel.png: the Launch tab once
ready; panel-chat.png, panel-monitor.png).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from browser_helpers import notebook_page, run_first_cell, start_jupyterlab, write_notebook

from mixvllm_nb.process import registry
from mixvllm_nb.process.logs import PHASE_NAMES

pytestmark = pytest.mark.vllm  # a real engine in every test

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SERVER = "panel-browser"
# Not the shared server's config (its max_tokens differs), so this is a real, new launch.
CONFIG = {"server": {"name": SERVER}, "generation_defaults": {"temperature": 0.0, "max_tokens": 32},
          "heartbeat_interval": 1.0}

# Records every distinct text that the last element matching `selector` shows, in window[key].
WATCH_TEXT = """([root, selector, key]) => {
  window[key] = [];
  const box = document.querySelector(root);
  const record = () => {
    const found = box.querySelectorAll(selector);
    const text = found.length ? found[found.length - 1].textContent : '';
    const seen = window[key];
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  };
  new MutationObserver(record).observe(box, {subtree: true, childList: true, characterData: true});
}"""


def _stop_servers_of_other_processes() -> None:
    """Stop what the notebook's kernel launched (this test's servers), never this process's own."""
    from mixvllm_nb.api import stop_server

    for record in registry.list_records():
        if record.owner.get("pid") != os.getpid() and not record.attached:
            stop_server(record.name, force=True)


def test_panel_in_jupyterlab_launches_chats_and_stops(tmp_path):
    from playwright.sync_api import expect

    root = tmp_path / "lab"
    root.mkdir()
    (root / "server.yaml").write_text(yaml.safe_dump(CONFIG))
    write_notebook(root / "panel.ipynb", ["%load_ext mixvllm_nb\n%vllm_panel"])
    write_notebook(root / "notebook7.ipynb", ["%load_ext mixvllm_nb\n%vllm_panel"])
    ARTIFACTS.mkdir(exist_ok=True)
    lab = start_jupyterlab(root, extensions=("mixvllm_nb",))
    try:
        with notebook_page(lab, "panel.ipynb", tmp_path / "chromium-profile") as page:
            panel = page.locator(".mixvllm-panel")
            run_first_cell(page, panel)

            # Launch from the YAML file: a new server (not the shared one), started for real.
            panel.get_by_placeholder("path/to/server.yaml").fill("server.yaml")  # the kernel runs in root
            panel.get_by_role("button", name="Load YAML", exact=True).click()
            expect(panel.get_by_placeholder("default: from the model")).to_have_value(SERVER, timeout=30_000)
            expect(panel.locator(".mixvllm-estimate")).to_contain_text("KV cache", timeout=30_000)
            page.evaluate(WATCH_TEXT, [".mixvllm-panel", ".mixvllm-phase", "__phases"])
            panel.get_by_role("button", name="Launch", exact=True).click()
            outcome = panel.locator(".mixvllm-outcome")
            expect(outcome).to_contain_text(f"Launched {SERVER}", timeout=60_000)
            expect(outcome).to_contain_text("ready", timeout=300_000)
            expect(panel.locator(".mixvllm-state")).to_contain_text("ready", timeout=30_000)
            expect(panel.locator(".mixvllm-reported")).to_contain_text("tokens", timeout=30_000)
            # The progress bar named the start-up phases on the way (read from the server's log).
            # (the panel first showed the server it opened on, e.g. "shared: ready" in the suite)
            phases = [text for text in page.evaluate("window.__phases") if text.startswith(f"{SERVER}: ")]
            (ARTIFACTS / "panel-phases.json").write_text(json.dumps(phases, indent=1))
            assert phases[-1] == f"{SERVER}: ready", phases
            order = [PHASE_NAMES.index(text.split(": ", 1)[1]) for text in phases]
            assert len(order) >= 2 and order == sorted(order), phases  # forward only, ending ready
            panel.screenshot(path=str(ARTIFACTS / "panel.png"))

            # Chat: the answer streams in, and the page shows it in more than one step.
            panel.get_by_role("tab", name="Chat", exact=True).click()
            page.evaluate(WATCH_TEXT, [".mixvllm-transcript", ".mixvllm-answer", "__answers"])
            panel.get_by_placeholder("Message").fill("What is the capital of France?")
            panel.get_by_role("button", name="Send", exact=True).click()
            answer = panel.locator(".mixvllm-transcript .mixvllm-answer").last
            expect(answer).to_contain_text("Paris", timeout=120_000)
            expect(panel.get_by_role("button", name="Send", exact=True)).to_be_enabled(timeout=60_000)
            steps = page.evaluate("window.__answers")
            final = answer.text_content()
            assert "Paris" in final
            assert len(steps) >= 2, steps
            assert steps[-1] == final
            assert all(final.startswith(step) for step in steps), steps  # it grew, piece by piece
            (ARTIFACTS / "panel-stream-steps.json").write_text(json.dumps(steps, indent=1))
            page.wait_for_timeout(500)
            panel.screenshot(path=str(ARTIFACTS / "panel-chat.png"))

            # "Chat in a terminal": the server extension opens a Jupyter terminal running mixvllm-chat.
            panel.get_by_role("button", name="Chat in a terminal", exact=True).click()
            link = panel.get_by_role("link", name="open it")
            expect(link).to_be_visible(timeout=60_000)
            terminal = link.get_attribute("href").rstrip("/").rsplit("/", 1)[-1]
            assert terminal in [t["name"] for t in lab.api("/api/terminals")]

            # Monitor: the background thread's figures reach the page.
            panel.get_by_role("tab", name="Monitor", exact=True).click()
            expect(panel.locator(".mixvllm-load")).to_contain_text("tokens/s", timeout=30_000)
            expect(panel.locator(".mixvllm-monitor-summary")).to_contain_text(SERVER)
            expect(panel.locator(".mixvllm-memory")).to_contain_text("GiB of", timeout=30_000)
            panel.screenshot(path=str(ARTIFACTS / "panel-monitor.png"))

            # Stop: the state changes, and the server is gone from the registry.
            panel.get_by_role("tab", name="Launch", exact=True).click()
            panel.get_by_role("button", name="Stop", exact=True).click()
            expect(panel.locator(".mixvllm-state")).to_contain_text("stopped", timeout=120_000)
            expect(outcome).to_contain_text("nothing left", timeout=60_000)
            assert registry.get(SERVER, missing_ok=True) is None

            # Notebook 7 renders the same panel, and its callbacks answer there too.
            page.goto(f"{lab.url}/notebooks/notebook7.ipynb?token={lab.token}", timeout=120_000)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
            panel = page.locator(".mixvllm-panel")
            run_first_cell(page, panel)
            expect(panel.locator(".mixvllm-estimate")).to_contain_text("KV cache", timeout=30_000)
            panel.get_by_role("tab", name="Chat", exact=True).click()
            panel.get_by_role("button", name="Send", exact=True).click()
            expect(panel.locator(".mixvllm-error")).to_contain_text("chat:", timeout=30_000)
    finally:
        _stop_servers_of_other_processes()
        lab.stop()
    assert (ARTIFACTS / "panel.png").stat().st_size > 10_000

"""Drive a real IPython kernel (jupyter_client) and collect what a notebook would show."""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import KernelManager


@dataclass
class CellResult:
    """Everything a cell sent on IOPub, in order."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.messages if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for m in self.messages if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")

    @property
    def error(self) -> dict[str, Any] | None:
        return next((m["content"] for m in self.messages if m["msg_type"] == "error"), None)

    @property
    def streams(self) -> list[str]:
        return [m["content"]["text"] for m in self.messages if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"]

    def data(self, mime: str = "text/plain") -> list[str]:
        kinds = ("execute_result", "display_data", "update_display_data")
        return [m["content"]["data"].get(mime, "") for m in self.messages if m["msg_type"] in kinds]

    @property
    def result(self) -> str:
        return next((m["content"]["data"].get("text/plain", "") for m in self.messages if m["msg_type"] == "execute_result"), "")


class Kernel:
    """A started kernel with a blocking client."""

    def __init__(self, cwd: str | None = None) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=cwd, env=os.environ.copy())
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.manager.provisioner.process.pid

    def run(self, code: str, timeout: float = 300, on_message=None) -> CellResult:
        """Execute ``code`` and return its IOPub messages once the kernel is idle again."""
        msg_id = self.client.execute(code)
        result = CellResult()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"cell did not finish in {timeout} s: {code!r}")
            try:
                msg = self.client.get_iopub_msg(timeout=min(remaining, 1))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                if msg["msg_type"] == "update_display_data":  # updates from background threads
                    result.messages.append(msg)
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return result
            result.messages.append(msg)
            if on_message is not None:
                on_message(msg)

    def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Collect IOPub messages for ``seconds`` (e.g. display updates from a background thread)."""
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                got.append(self.client.get_iopub_msg(timeout=0.2))
            except queue.Empty:
                pass
        return got

    def restart(self) -> None:
        self.manager.restart_kernel(now=False)
        self.client.wait_for_ready(timeout=60)

    def shutdown(self) -> None:
        self.client.stop_channels()
        if self.manager.is_alive():
            self.manager.shutdown_kernel(now=False)

"""Tiny blocking HTTP GET and POST for health checks and admin calls (stdlib only: the manager stays light)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def http_get(url: str, *, api_key: str = "", timeout: float = 5.0) -> tuple[int, bytes]:
    """Return ``(status, body)`` for a GET; status 0 when the server cannot be reached."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return _send(urllib.request.Request(url, headers=headers), timeout)


def _send(request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() if exc.fp else b""
    except (OSError, ValueError):
        return 0, b""


def http_post(url: str, *, api_key: str = "", timeout: float = 5.0) -> tuple[int, bytes]:
    """Return ``(status, body)`` for an empty POST; status 0 when the server cannot be reached."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return _send(urllib.request.Request(url, data=b"", headers=headers, method="POST"), timeout)


def http_get_json(url: str, *, api_key: str = "", timeout: float = 5.0) -> Any | None:
    """Return the decoded JSON of a 200 answer, or None."""
    status, body = http_get(url, api_key=api_key, timeout=timeout)
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None

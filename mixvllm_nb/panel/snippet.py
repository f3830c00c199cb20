"""The panel's chat as plain ``openai`` Python code a user can copy into a script."""

from __future__ import annotations

import pprint
from typing import Any

from ..client import request_params

_MAX_DATA_URL = 120  # an attached image is megabytes of base64: show its start only


def _shorten_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                url = part.get("image_url", {}).get("url", "") if isinstance(part, dict) else ""
                if url.startswith("data:") and len(url) > _MAX_DATA_URL:
                    part = {"type": "image_url", "image_url": {"url": url[:60] + "...(base64 shortened)"}}
                parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    return out


def openai_code(base_url: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """Return Python code that sends ``messages`` with ``params`` through the ``openai`` client.

    The API key is read from ``OPENAI_API_KEY``, never written into the code.
    """
    kwargs = request_params(params)
    lines = [
        "import os",
        "",
        "from openai import OpenAI",
        "",
        "# The server's API key: %vllm_client NAME (or the registry) has it; it is not copied here.",
        f"client = OpenAI(base_url={base_url.rstrip('/') + '/v1'!r}, api_key=os.environ[\"OPENAI_API_KEY\"])",
        "response = client.chat.completions.create(",
        f"    model={model!r},",
        "    messages=" + _indent(pprint.pformat(_shorten_images(messages), width=96, sort_dicts=False)) + ",",
    ]
    lines += [f"    {key}={value!r}," for key, value in kwargs.items()]
    lines += [")", "print(response.choices[0].message.content)"]
    return "\n".join(lines) + "\n"


def _indent(text: str) -> str:
    return text.replace("\n", "\n    ")

"""Images in a model-garden request: JSON bodies with URLs and base64 data URLs, or uploaded files (multipart).

Seed 004 takes images as URLs, base64 data URLs or files. Over HTTP a file arrives as a
``multipart/form-data`` upload: its ``images`` parts (one or several) become data URLs, as the engine takes
them, and the other form fields are the JSON body's (``prompt``, ``max_tokens``, ...; or one ``request``
field holding the whole JSON body). Each image, uploaded or inline, is held to ``MixVLLM.garden_max_image_bytes``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from tornado import httputil

from .base import OpenAIError

# Form fields that stay text even when they read as JSON ("prompt": "42" is a prompt, not a number).
TEXT_FIELDS = frozenset({"prompt", "system_prompt", "model"})
IMAGE_FIELDS = ("images", "image")


def request_body(content_type: str, raw: bytes, image_limit: int) -> tuple[dict[str, Any], list[str]]:
    """Return the request's JSON object and the images uploaded with it (as data URLs); 400/413 in one line."""
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        return _multipart(content_type, raw, image_limit)
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise OpenAIError(400, f"request body: invalid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body: expected a JSON object", code="invalid_json")
    for url in _inline_images(body):
        check_data_url(url, image_limit)
    return body, []


def _multipart(content_type: str, raw: bytes, image_limit: int) -> tuple[dict[str, Any], list[str]]:
    fields: dict[str, list[bytes]] = {}
    files: dict[str, list[httputil.HTTPFile]] = {}
    httputil.parse_body_arguments(content_type, raw, fields, files)
    if not fields and not files:
        raise OpenAIError(400, "request body: a multipart/form-data body with no parts (or no boundary); send "
                          "form fields (prompt, ...) and image files under \"images\"", code="invalid_multipart")
    unknown = sorted(set(files) - set(IMAGE_FIELDS))
    if unknown:
        raise OpenAIError(400, f"request body: file field {unknown[0]!r} is not taken; send images as "
                          f"{' or '.join(IMAGE_FIELDS)}", code="invalid_multipart")
    if "request" in fields:
        body, _ = request_body("application/json", fields.pop("request")[0], image_limit)
    else:
        body = {}
    for name, values in fields.items():
        text = values[-1].decode("utf-8", errors="replace")
        body[name] = text if name in TEXT_FIELDS else _form_value(text)
    images = []
    for upload in (upload for field in IMAGE_FIELDS for upload in files.get(field, [])):
        kind = (upload.content_type or "").split(";", 1)[0].strip().lower()
        if not kind.startswith("image/"):
            raise OpenAIError(400, f"upload {upload.filename!r}: Content-Type {kind or 'none'!r} is not an image "
                              "(image/png, image/jpeg, ...)", code="invalid_image")
        _check_size(f"upload {upload.filename!r}", len(upload.body), image_limit)
        images.append(f"data:{kind};base64,{base64.b64encode(upload.body).decode('ascii')}")
    return body, images


def _form_value(text: str) -> Any:
    """A form field's value: a number, true/false or null when it reads as one, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _inline_images(body: dict[str, Any]) -> list[str]:
    """Return the image URLs of a generate (``images``) or chat (``image_url`` parts) body."""
    urls = [url for url in body.get("images") or [] if isinstance(url, str)]
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            url = part.get("image_url", {}).get("url") if isinstance(part, dict) else None
            if isinstance(url, str):
                urls.append(url)
    return urls


def check_data_url(url: str, limit: int) -> None:
    """Refuse a ``data:`` URL whose image is over ``limit`` bytes, or whose base64 is broken (URLs pass)."""
    if not url.startswith("data:"):
        return
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        return
    _check_size("a data: URL image", len(payload) * 3 // 4, limit)  # decoded size, without decoding
    try:
        base64.b64decode(payload[:4096 - 4096 % 4], validate=True)
    except (binascii.Error, ValueError):
        raise OpenAIError(400, f"a data: URL image ({header}) is not valid base64", code="invalid_image") from None


def _check_size(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise OpenAIError(413, f"{what} is {size:,} bytes, over the limit of {limit:,} per image "
                          "(MixVLLM.garden_max_image_bytes)", code="image_too_large")


def with_images(body: dict[str, Any], images: list[str]) -> dict[str, Any]:
    """Return a chat body with uploaded images appended to its last user message (as ``image_url`` parts)."""
    if not images:
        return body
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise OpenAIError(400, "request body: uploaded images need a user message to go with (\"messages\")",
                          code="invalid_request")
    last = users[-1]
    content = last.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
    last["content"] = parts + [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return body

"""The MCP servers file: seed 003's ``mcp_servers:`` YAML, or the ``{"mcpServers": {...}}`` JSON other clients use.

Each server is either a subprocess spoken to over stdio (``command``, ``args``, ``env``, ``cwd``) or a streamable
HTTP endpoint (``url``, ``headers``); ``timeout`` bounds each tool call (seconds). Every mistake is one
:class:`~mixvllm_nb.errors.ConfigError` line naming the server and the field.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

# The top-level keys that hold the servers: seed 003's, Claude Desktop's / Cursor's, VS Code's.
TOP_KEYS = ("mcp_servers", "mcpServers", "servers")
# Server names become tool-name prefixes, which OpenAI restricts to [A-Za-z0-9_-].
SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
STDIO_KEYS = {"command", "args", "env", "cwd"}
HTTP_KEYS = {"url", "headers"}
COMMON_KEYS = {"type", "transport", "timeout", "startup_timeout", "enabled", "disabled", "description"}
TYPES = {"stdio": "stdio", "http": "http", "streamable-http": "http", "streamable_http": "http",
         "streamableHttp": "http"}
# `command: python` runs this interpreter: a venv's mixvllm-chat finds the mcp SDK it was installed with.
PYTHON_NAMES = ("python", "python3")


@dataclass(frozen=True)
class MCPServerSpec:
    """One configured MCP server: a stdio command or an HTTP URL, and how long its calls may take."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    startup_timeout: float = 60.0

    @property
    def transport(self) -> str:
        """``stdio`` or ``http``."""
        return "http" if self.url else "stdio"

    def describe(self) -> str:
        """Return the server in a few words: ``weather (stdio: python server.py)``."""
        where = self.url if self.url else " ".join([Path(self.command or "").name, *self.args])
        return f"{self.name} ({self.transport}: {where})"


def load_mcp_config(path: str | Path) -> list[MCPServerSpec]:
    """Return the servers listed in a YAML (``.yaml``/``.yml``) or JSON (``.json``) file; a one-line
    ConfigError for a missing file, bad syntax or a bad entry."""
    source = Path(path).expanduser()
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"--mcp-config {path}: {exc.strerror or exc}; give a YAML or JSON file of MCP servers") \
            from None
    try:
        data = json.loads(text) if source.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--mcp-config {path}: not JSON (line {exc.lineno}: {exc.msg})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"--mcp-config {path}: not YAML ({where}{getattr(exc, 'problem', None) or exc})") \
            from None
    return parse_mcp_config(data, base=source.parent)


def parse_mcp_config(data: Any, *, base: Path | None = None) -> list[MCPServerSpec]:
    """Return the enabled servers of an already-parsed config (``cwd`` relative to ``base``)."""
    shape = ("expected mcp_servers: {NAME: {command: ..., args: [...]} or {url: ...}} "
             "(or JSON's {\"mcpServers\": {...}})")
    if not isinstance(data, dict):
        raise ConfigError(f"mcp config: {shape}")
    given = [key for key in TOP_KEYS if key in data]
    if len(given) != 1:
        found = f"found {', '.join(map(str, data)) or 'nothing'}" if not given else f"found {' and '.join(given)}"
        raise ConfigError(f"mcp config: {shape}; {found}")
    top = given[0]
    entries = data[top]
    if isinstance(entries, list):  # [{name: weather, command: ...}, ...]
        listed: dict[str, Any] = {}
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"{top}[{index}]: a list entry needs a name: {{name: NAME, command: ...}}")
            listed[entry["name"]] = {k: v for k, v in entry.items() if k != "name"}
        entries = listed
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{top}: no server listed; {shape}")
    specs = [spec for name, entry in entries.items() if (spec := _server(top, str(name), entry, base)) is not None]
    if not specs:
        raise ConfigError(f"{top}: every server is disabled; enable one")
    return specs


def _server(top: str, name: str, entry: Any, base: Path | None) -> MCPServerSpec | None:
    where = f"{top}.{name}"
    if not SERVER_NAME.match(name):
        raise ConfigError(f"{where}: a server name is letters, digits, '_' and '-' (up to 32), starting with a "
                          "letter or digit (it prefixes tool names)")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with command (stdio) or url (HTTP)")
    unknown = sorted(set(entry) - STDIO_KEYS - HTTP_KEYS - COMMON_KEYS)
    if unknown:
        allowed = ", ".join(sorted(STDIO_KEYS | HTTP_KEYS | COMMON_KEYS))
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed: {allowed}")
    if entry.get("disabled") is True or entry.get("enabled") is False:
        return None
    kind_key = "type" if "type" in entry else "transport"
    kind = entry.get(kind_key)
    if kind is not None and kind not in TYPES:
        raise ConfigError(f"{where}.{kind_key}: {kind!r} is not supported; allowed: stdio, http (streamable HTTP)")
    command, url = entry.get("command"), entry.get("url")
    if command is not None and url is not None:
        raise ConfigError(f"{where}: both command and url; give command (stdio) or url (HTTP), not both")
    if command is None and url is None:
        raise ConfigError(f"{where}.command: missing; give command (stdio) or url (HTTP)")
    if kind is not None and TYPES[kind] != ("http" if url is not None else "stdio"):
        wanted = "url" if TYPES[kind] == "http" else "command"
        raise ConfigError(f"{where}.{wanted}: missing; {kind_key} {kind} needs {wanted}")
    timeouts = {key: _seconds(where, key, entry[key]) for key in ("timeout", "startup_timeout") if key in entry}
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url: {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/mcp")
        for key in STDIO_KEYS & set(entry):
            raise ConfigError(f"{where}.{key}: only for stdio servers (command); this one has a url")
        return MCPServerSpec(name, url=url, headers=_strings(where, "headers", entry.get("headers")), **timeouts)
    if not isinstance(command, str) or not command.strip():
        raise ConfigError(f"{where}.command: must be a program name or path (a string)")
    for key in HTTP_KEYS & set(entry):
        raise ConfigError(f"{where}.{key}: only for HTTP servers (url); this one has a command")
    args = entry.get("args") or []
    if not isinstance(args, list) or any(isinstance(a, dict | list) or a is None for a in args):
        raise ConfigError(f"{where}.args: must be a list of strings, e.g. [server.py, --verbose]")
    cwd = entry.get("cwd")
    if cwd is not None:
        cwd = str((base or Path.cwd()) / Path(str(cwd)).expanduser())
    return MCPServerSpec(name, command=sys.executable if command in PYTHON_NAMES else command,
                         args=tuple(str(a) for a in args), env=_strings(where, "env", entry.get("env")), cwd=cwd,
                         **timeouts)


def _seconds(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}.{key}: {value!r} is not a number of seconds above 0")
    return float(value)


def _strings(where: str, key: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.{key}: must be a mapping of NAME: value")
    return {str(k): ("1" if v is True else "0" if v is False else str(v)) for k, v in value.items()}

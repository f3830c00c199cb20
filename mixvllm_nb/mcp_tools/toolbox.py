"""Connected MCP servers and their tools, driven from plain synchronous code.

The ``mcp`` SDK is async. A :class:`Toolbox` runs it on an event loop of its own, in a background thread, so a
terminal chat or a notebook cell (whose kernel already runs an event loop) just calls ``toolbox.call(...)``.
Each server lives in one task from connect to close (the SDK's cancel scopes must be left by the task that
entered them); :meth:`Toolbox.close` ends them, which stops stdio servers (stdin closed, then their process tree
killed), and runs at interpreter exit for any toolbox still open.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import tempfile
import threading
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from ..errors import MixVLLMError
from .config import MCPServerSpec

# Toolboxes not closed yet: closed at interpreter exit, so no MCP server process outlives its chat.
_OPEN: weakref.WeakSet[Toolbox] = weakref.WeakSet()
# Longest a tool result is shown in the transcript (the model gets all of it).
SHOWN_CHARS = 300


class MCPServerError(MixVLLMError):
    """An MCP server could not be started or reached; the message names it and says why."""


class BadToolCall(MixVLLMError):
    """The model asked for a tool that is not offered, or with arguments that do not fit its schema."""


@dataclass(frozen=True)
class MCPTool:
    """One tool as the model sees it (``name``, prefixed with its server's when two servers share it)."""

    name: str
    server: str
    remote_name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        """Return the tool as an OpenAI ``tools`` entry, ``strict``: its arguments are decoded under its schema.

        Measured on vLLM 0.32 CPU with the embedded SmolLM2-135M, tool_choice required: without ``strict`` the
        arguments came back as ``"Paris"`` (any JSON), with it as ``{"city": "Paris"}``.
        """
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters, "strict": True}}


@dataclass(frozen=True)
class ToolOutcome:
    """What a call gave: the text for the model, and ``kind``: ``result``, ``error``, ``timeout`` or ``bad call``."""

    tool: str
    text: str
    kind: str = "result"

    @property
    def ok(self) -> bool:
        return self.kind == "result"

    def line(self) -> str:
        """Return the transcript line: ``[tool result] get_weather: ...`` (shortened, on one line)."""
        text = " ".join(self.text.split())
        if len(text) > SHOWN_CHARS:
            text = text[:SHOWN_CHARS] + "…"
        return f"[tool {self.kind}] {self.tool}: {text}"

    def for_model(self) -> str:
        """Return the ``tool`` message's content: the result, or the problem in words."""
        return self.text if self.ok else f"error ({self.kind}): {self.text}"


def check_arguments(tool: MCPTool, arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    """Return the call's arguments as a dict checked against the tool's JSON schema; BadToolCall in one line."""
    import jsonschema

    value: Any = arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise BadToolCall(f"{tool.name}: arguments are not JSON: {_short(arguments)}; "
                              f"give an object such as {_example(tool)}") from None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise BadToolCall(f"{tool.name}: arguments must be a JSON object such as {_example(tool)}, "
                          f"not {_KINDS.get(type(value), type(value).__name__)} {_short(json.dumps(value))}")
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(tool.parameters)(
        tool.parameters).iter_errors(value))
    if error is not None:
        at = ".".join(map(str, error.absolute_path))
        raise BadToolCall(f"{tool.name}: {f'{at}: ' if at else ''}{error.message} "
                          f"(arguments {_short(json.dumps(value))})")
    return value


_KINDS = {str: "the string", int: "the number", float: "the number", bool: "the boolean", list: "the list"}


def _example(tool: MCPTool) -> str:
    names = list(tool.parameters.get("properties") or {})[:3]
    return "{" + ", ".join(f'"{name}": ...' for name in names) + "}"


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # anyio task groups wrap the cause
        return _one_line(exc.exceptions[0])
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Toolbox:
    """The tools of some MCP servers, callable from synchronous code; use as a context manager or call close()."""

    def __init__(self, servers: list[MCPServerSpec]):
        self.servers = list(servers)
        self.tools: dict[str, MCPTool] = {}
        self._clients: dict[str, Any] = {}
        self._holders: list[asyncio.Task[None]] = []
        self._logs: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> Toolbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Toolbox:
        """Connect to every server and list its tools; MCPServerError (one line) if one cannot be started."""
        if self._loop is not None:
            return self
        try:
            from mcp import Client  # noqa: F401  (2.x: the SDK's high-level client)
        except ImportError:
            raise MCPServerError("MCP tools need the mcp SDK 2.x: pip install 'mixvllm-nb[mcp]' (mcp>=2.3,<3)") \
                from None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mixvllm-mcp", daemon=True)
        self._thread.start()
        _OPEN.add(self)
        try:
            listed = self._run(self._connect_all(), max(s.startup_timeout for s in self.servers) + 15)
        except BaseException:
            self.close()
            raise
        self.tools = {tool.name: tool for tool in _named(listed)}
        return self

    def openai_tools(self) -> list[dict[str, Any]]:
        """Return every tool as an OpenAI ``tools`` entry."""
        return [tool.openai() for tool in self.tools.values()]

    def call(self, name: str, arguments: str | dict[str, Any] | None) -> ToolOutcome:
        """Run one tool call the model made; never raises for the tool's or the model's mistakes."""
        tool = self.tools.get(name)
        if tool is None:
            return ToolOutcome(name, f"no such tool; offered: {', '.join(self.tools) or 'none'}", "bad call")
        try:
            checked = check_arguments(tool, arguments)
        except BadToolCall as exc:
            return ToolOutcome(name, str(exc).removeprefix(f"{name}: "), "bad call")
        spec = next(s for s in self.servers if s.name == tool.server)
        try:
            result = self._run(self._call(tool, checked, spec.timeout), spec.timeout + 10)
        except TimeoutError:
            return ToolOutcome(name, f"no answer within {spec.timeout:g} s (timeout, server {tool.server})", "timeout")
        except Exception as exc:  # the server went away, a protocol error: shown, and the chat goes on
            return ToolOutcome(name, _one_line(exc), "error")
        text = "\n".join(_content_text(part) for part in result.content) or json.dumps(result.structured_content)
        return ToolOutcome(name, text, "error" if result.is_error else "result")

    def close(self) -> None:
        """Disconnect from every server (stdio servers stop); safe to call twice."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        _OPEN.discard(self)
        if self._stop is not None:
            loop.call_soon_threadsafe(self._stop.set)
        holders = list(self._holders)
        if holders:
            done: Future[Any] = asyncio.run_coroutine_threadsafe(asyncio.wait(holders, timeout=15), loop)
            try:
                done.result(20)
            except Exception:  # a server that would not stop: its task is cancelled with the loop below
                pass
        for task in holders:
            loop.call_soon_threadsafe(task.cancel)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if not loop.is_running():
            loop.close()
        for handle in self._logs.values():
            handle.close()

    # --- on the toolbox's own loop -------------------------------------------------------------------------

    def _run(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError from None

    async def _connect_all(self) -> list[tuple[str, Any]]:
        self._stop = asyncio.Event()
        listed: list[tuple[str, Any]] = []
        for spec in self.servers:
            ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._holders.append(asyncio.create_task(self._hold(spec, ready)))
            try:
                tools = await asyncio.wait_for(asyncio.shield(ready), spec.startup_timeout)
            except TimeoutError:
                raise MCPServerError(f"mcp_servers.{spec.name}: not ready within {spec.startup_timeout:g} s "
                                     f"({spec.describe()}){self._stderr_tail(spec)}") from None
            except Exception as exc:
                raise MCPServerError(f"mcp_servers.{spec.name}: could not start {spec.describe()}: "
                                     f"{_one_line(exc)}{self._stderr_tail(spec)}") from None
            listed += [(spec.name, tool) for tool in tools]
        return listed

    async def _hold(self, spec: MCPServerSpec, ready: asyncio.Future[Any]) -> None:
        """Connect, list the tools, then stay connected until close() (one task: the SDK's scopes need it)."""
        try:
            async with self._client(spec) as client:
                tools = (await client.list_tools()).tools  # one page: servers list a few tools
                self._clients[spec.name] = client
                ready.set_result(tools)
                assert self._stop is not None
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else MCPServerError("cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._clients.pop(spec.name, None)

    def _client(self, spec: MCPServerSpec) -> Any:
        from mcp import Client

        if spec.url:
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client

            http = create_mcp_http_client(headers=spec.headers or None)
            return Client(streamable_http_client(spec.url, http_client=http))
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        # The server's stderr goes to a file: a kernel's sys.stderr has no file descriptor to give a subprocess.
        log = self._logs.setdefault(spec.name, tempfile.TemporaryFile("w+", prefix=f"mixvllm-mcp-{spec.name}-"))
        params = StdioServerParameters(command=spec.command or "", args=list(spec.args), env=spec.env or None,
                                       cwd=spec.cwd)
        return Client(stdio_client(params, errlog=log))

    async def _call(self, tool: MCPTool, arguments: dict[str, Any], timeout: float) -> Any:
        client = self._clients.get(tool.server)
        if client is None:
            raise MCPServerError(f"server {tool.server} is no longer connected")
        try:
            return await client.call_tool(tool.remote_name, arguments, read_timeout_seconds=timeout)
        except Exception as exc:
            from mcp_types import REQUEST_TIMEOUT

            if getattr(exc, "code", None) == REQUEST_TIMEOUT:
                raise TimeoutError from None
            raise

    def _stderr_tail(self, spec: MCPServerSpec) -> str:
        log = self._logs.get(spec.name)
        if log is None:
            return ""
        log.flush()
        log.seek(0)
        lines = [line.strip() for line in log.read().splitlines() if line.strip()]
        return f"; its stderr ends: {_short(lines[-1], 160)}" if lines else ""


def _named(listed: list[tuple[str, Any]]) -> list[MCPTool]:
    """Name each tool for the model: its own name, or ``server__name`` when two servers offer that name."""
    counts: dict[str, int] = {}
    for _, tool in listed:
        counts[tool.name] = counts.get(tool.name, 0) + 1
    return [MCPTool(tool.name if counts[tool.name] == 1 else f"{server}__{tool.name}", server, tool.name,
                    tool.description or getattr(tool, "title", None) or tool.name,
                    dict(tool.input_schema or {"type": "object", "properties": {}}))
            for server, tool in listed]


def _content_text(part: Any) -> str:
    text = getattr(part, "text", None)
    return text if isinstance(text, str) else f"[{getattr(part, 'type', 'content')}]"


@atexit.register
def _close_all() -> None:
    for toolbox in list(_OPEN):
        toolbox.close()

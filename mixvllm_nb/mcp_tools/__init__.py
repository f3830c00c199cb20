"""MCP tools in the chat: the configured MCP servers' tools offered to the model, their calls run and shown.

``load_mcp_config`` reads the servers (seed 003's ``mcp_servers:`` YAML or the common ``{"mcpServers": ...}``
JSON); :class:`~.toolbox.Toolbox` starts them (stdio subprocesses, streamable HTTP by URL) on a background
thread's event loop; :func:`~.chat.tool_chat_turn` runs one chat turn with them. Importing this package does
not import the ``mcp`` SDK: that happens when a toolbox starts.
"""

from __future__ import annotations

from .config import MCPServerSpec, load_mcp_config, parse_mcp_config

__all__ = ["MCPServerSpec", "load_mcp_config", "parse_mcp_config"]

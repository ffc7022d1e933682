"""The `[tools]` config section: which tools run, where MCP servers are, and the safety rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether_box.config import section, setting
from aether_box.errors import ConfigError
from aether_box.tools.spec import NAME

__all__ = ["ToolsSettings", "DEFAULT_MCP_ENV"]

# What a stdio MCP server inherits from the box's environment: enough to find programs and
# write temporary files, never the box's secrets. The mcp SDK adds HOME, PATH, SHELL, TERM,
# USER and LOGNAME itself; a server's own "env" map in config comes on top.
DEFAULT_MCP_ENV = ["LANG", "LC_ALL", "TMPDIR", "PYTHONPATH"]
NO_TOOL_EXAMPLES = [
    "hello, nice to meet you",
    "thanks a lot, bye",
    "tell me something funny",
    "write a story about a dragon",
    "compose a song about summer love",
    "who invented the telephone",
    "explain how vaccines work",
    "what is the meaning of this word",
    "how do I make pancakes",
    "suggest a name for my dog",
    "what is the square root of 81",
    "say this sentence in German",
]
SERVER_KEYS = {"command", "args", "env", "cwd", "url", "headers", "effect", "private", "type"}


@section("tools")
@dataclass
class ToolsSettings:
    """Tools the box may call: built-ins, bus workers' and MCP servers'. Off until enabled.

    In config.toml::

        [tools]
        enabled = true
        allow = ["memory_*", "weather_*"]      # which tools may be called (globs)

        [tools.mcpServers.files]                # the usual mcpServers shape
        command = "npx"
        args = ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]

        [tools.mcpServers.search]
        url = "http://127.0.0.1:9000/mcp"      # streamable HTTP
        effect = "send"                         # what its tools do: read, write or send
    """

    # Nothing is listed as callable, called or orchestrated until this is true.
    enabled: bool = False
    # Tool names (shell-style globs) that may be called; the rest are listed as not allowed.
    allow: list[str] = field(default_factory=lambda: ["*"])
    # Offer the box's own services as tools (memory search and add, session history, embed).
    builtins: bool = True
    # A call that takes longer fails with a timeout error (the tool's own work may go on).
    timeout_s: float = setting(30.0, min=0.01, max=3600)
    # A task whose context holds private data (memory, sessions) may call tools that send
    # data out only when this is true.
    allow_private_send: bool = False
    # MCP servers, in the usual {"name": {"command", "args", "env"} | {"url"}} shape ...
    mcpServers: dict[str, Any] = field(default_factory=dict)  # noqa: N815 - the usual name
    # ... and/or a JSON file holding {"mcpServers": {...}} (as editors write it).
    mcp_config: Path | None = None
    # Environment variables of the box that stdio MCP servers get (see DEFAULT_MCP_ENV).
    mcp_env: list[str] = field(default_factory=lambda: list(DEFAULT_MCP_ENV))
    # How long an MCP server gets to start and list its tools.
    mcp_start_s: float = setting(20.0, min=0.1, max=600)
    # Orchestration: the encoder that compares a task with tool descriptions, the best
    # cosine below which no tool is called (fitted on bench/data/tools_suite.json by
    # bench/tools.py: its `fitted_floor`; 2-fold cross-validated accuracy 0.86), the default
    # model that fills arguments and answers, and the most tool calls per task.
    embed_model: str = "minilm"
    # Tasks that need no tool: one closer to these than to every tool's texts calls none
    # (as the router's default route's examples do). Kinds of talk, not test questions.
    no_tool_examples: list[str] = field(default_factory=lambda: list(NO_TOOL_EXAMPLES))
    min_score: float = setting(0.27, min=-1.0, max=1.0)
    model: str = "smollm2"
    max_steps: int = setting(3, min=1, max=16)

    def resolve(self, data_dir: Path) -> None:
        """Check the inline MCP servers (a file named by mcp_config is read at start)."""
        check_servers(self.mcpServers, "[tools.mcpServers]")


def check_servers(servers: Any, where: str) -> dict[str, dict[str, Any]]:
    """The servers map, checked: each has a command (stdio) or a url (streamable HTTP)."""
    if not isinstance(servers, dict):
        raise ConfigError(f"{where} must be a table of servers")
    for name, server in servers.items():
        place = f"{where} {name!r}"
        if not NAME.match(f"{name}_"):  # its tools are named server_tool
            raise ConfigError(
                f"{place}: a server's name must be letters, digits, '_', '.' or '-' (first: "
                "a letter or digit), at most 63: its tools are named after it"
            )
        if not isinstance(server, dict):
            raise ConfigError(f"{place} must be a table with command or url")
        unknown = set(server) - SERVER_KEYS
        if unknown:
            raise ConfigError(f"{place} has unknown keys {sorted(unknown)}")
        if ("command" in server) == ("url" in server):
            raise ConfigError(f"{place} needs exactly one of command (stdio) or url (HTTP)")
        if "command" in server and not isinstance(server["command"], str):
            raise ConfigError(f"{place} command must be a text")
        if "url" in server and not isinstance(server["url"], str):
            raise ConfigError(f"{place} url must be a text")
        if not isinstance(server.get("args", []), list):
            raise ConfigError(f"{place} args must be a list of texts")
        if not isinstance(server.get("env", {}), dict):
            raise ConfigError(f"{place} env must be a table of texts")
        if server.get("effect", "send") not in ("read", "write", "send"):
            raise ConfigError(f"{place} effect must be read, write or send")
    return servers

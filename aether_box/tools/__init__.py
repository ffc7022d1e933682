"""Tools: a registry of what the box may call (bus workers, MCP servers, built-ins), the
orchestrator that picks and calls them, and the box as an MCP server; see
aether_box.tools.service."""

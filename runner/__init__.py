"""lmflow: declarative, version-controlled workflows for local LLMs with MCP tools."""

__version__ = "0.1.0"

"""Reusable agents: a step's `agent: NAME` filled in from the top-level `agents:` map.

Resolved on the step's data before anything reads it (the validator's plan and the typed
Workflow alike), so the plan, the executor, fingerprints and cassettes all see one merged
step and nothing downstream knows agents exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .prompt_files import spells, text_key_at
from .source import JsonPath

AGENT_KEYS = (
    "model",
    "system",  # or system_file, read into system before the merge
    "mcp",
    "tools",
    "tool_choice",
    "temperature",
    "max_tokens",
    "max_rounds",
    "output_schema",
    "max_result_chars",
)
"""The settings an agent gives the steps that name it."""


def agent_of(step: Any, agents: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The agent a model step names, or None (no `agent:`, an unknown name, or a step of
    another kind: the validator reports those)."""
    if not isinstance(step, Mapping) or any(k in step for k in ("tool", "run", "workflow", "ask")):
        return None
    name = step.get("agent")
    agent = agents.get(name) if isinstance(name, str) else None
    return agent if isinstance(agent, Mapping) else None


def with_agent(step: Any, agents: Mapping[str, Any]) -> Any:
    """The step's data with its agent's settings for the keys it does not set itself."""
    agent = agent_of(step, agents)
    if agent is None:
        return step
    inherited = {key: agent[key] for key in AGENT_KEYS if key in agent and not _sets(step, key)}
    return {**step, **inherited}


def _sets(step: Mapping[str, Any], key: str) -> bool:
    """Whether the step gives `key` itself: the key, or a server prompt standing for it
    (`system_from:`)."""
    return key in step or f"{key}_from" in step


def written_at(step: Any, agents: Mapping[str, Any], here: JsonPath, key: str) -> JsonPath:
    """Where the file spells a (merged) step's `key`: the step, or the agent it came from;
    for a text read from a file, the key naming the file."""
    agent = agent_of(step, agents)
    if agent is not None and not spells(step, key) and spells(agent, key):
        return ("agents", step["agent"], text_key_at(agent, key))
    return (*here, text_key_at(step, key))

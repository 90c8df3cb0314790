"""`prompt_from:`/`system_from:` checked against the prompts their servers offer, before any
step runs: the prompt exists (did-you-mean otherwise), its required arguments are given, and
no argument is one it does not take. Pure: prompt lists in, Problems with file positions out.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .spec.model import AgentStep, Workflow, walk_steps
from .spec.problems import Problem
from .toolcheck import argument_name_problems

PROMPT_KEYS = ("system_from", "prompt_from")


class PromptArgument(Protocol):
    """What the check needs of an argument: the MCP SDK's PromptArgument is one."""

    @property
    def name(self) -> str: ...

    @property
    def required(self) -> bool | None: ...


class DescribedPrompt(Protocol):
    """What the check needs of a prompt: the MCP SDK's Prompt is one."""

    @property
    def name(self) -> str: ...

    @property
    def arguments(self) -> Sequence[PromptArgument] | None: ...


def prompt_servers(workflow: Workflow) -> list[str]:
    """The servers whose prompts some step takes, in declaration order."""
    named = {spec["server"] for *_, spec in _server_prompts(workflow)}
    return [name for name in workflow.mcp_servers if name in named]


def check_server_prompts(
    workflow: Workflow, prompts_of: Callable[[str], Sequence[DescribedPrompt]]
) -> list[Problem]:
    """Every problem of the steps' server prompts, in file order."""
    problems = [
        problem
        for here, step, key, spec in _server_prompts(workflow)
        for problem in _check(workflow, (*here, key), step.id, spec, prompts_of)
    ]
    return sorted(problems, key=lambda p: (p.line, p.col))


def _check(
    workflow: Workflow,
    here: tuple[str | int, ...],
    step_id: str,
    spec: Mapping[str, Any],
    prompts_of: Callable[[str], Sequence[DescribedPrompt]],
) -> list[Problem]:
    """The problems of one server prompt (`here` is where the file spells it)."""

    def problem(path: tuple[str | int, ...], message: str, rule: str, hint: str) -> Problem:
        at = workflow.source.key_position((*here, *path))
        return Problem(str(workflow.path), at.line, at.col, message, rule, hint)

    key, server, name = here[-1], spec["server"], spec["name"]
    offered = {prompt.name: prompt for prompt in prompts_of(server)}
    prompt = offered.get(name)
    if prompt is None:
        close = difflib.get_close_matches(name, list(offered), n=3, cutoff=0.6)
        guess = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        return [
            problem(
                ("name",),
                f"step {step_id!r}: MCP server {server!r} has no prompt {name!r}{guess}",
                "prompt-not-found",
                f"prompts of {server!r}: {', '.join(sorted(offered)) or 'none'}",
            )
        ]
    declared = {argument.name: bool(argument.required) for argument in prompt.arguments or ()}
    signature = _signature(declared) or "no arguments"
    given: Mapping[str, Any] = spec.get("arguments") or {}
    return argument_name_problems(
        problem,
        step_id=step_id,
        subject=f"prompt {name!r} of {server!r}",
        rule="prompt",
        given=given,
        given_at=("arguments",),
        named_at=("name",),
        required=[argument for argument, needed in declared.items() if needed],
        known=list(declared),
        add_hint=f"add them under `{key}: {{arguments: ...}}`; it takes ({signature})",
        takes=f"it takes ({signature})",
    )


def _server_prompts(
    workflow: Workflow,
) -> list[tuple[tuple[str | int, ...], AgentStep, str, Mapping[str, Any]]]:
    """Each server prompt a step takes (loop bodies included), with where the step is."""
    return [
        (here, step, key, spec)
        for here, step in walk_steps(workflow.steps)
        if isinstance(step, AgentStep)
        for key in PROMPT_KEYS
        if (spec := getattr(step, key)) is not None
    ]


def _signature(declared: Mapping[str, bool]) -> str:
    """`code, language?` (`?`: optional)."""
    return ", ".join(f"{name}{'' if required else '?'}" for name, required in declared.items())

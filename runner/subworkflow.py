"""What a run needs of the workflows its `workflow:` steps include, before the first step:
each one's template context as far as it is known then, and the MCP servers they all use.

The servers of a run are one set, started once, by name: a server the including file and
an included one both declare is shared when it comes out the same once rendered, and a
name whose settings differ is refused (exit 2), never guessed at.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from . import templating
from .errors import ConfigurationError, InputError
from .executor import coerce_inputs, nested_context, render_servers, servers_in_use
from .spec.model import McpServer, Workflow, WorkflowStep, thawed, walk_steps


def family_contexts(
    workflow: Workflow, context: Mapping[str, Any]
) -> Iterator[tuple[Workflow, Mapping[str, Any]]]:
    """The workflow with its context, then each included one (at any depth) with the
    context it will run in, as far as it is known before the run (`pre_run_inputs`)."""
    yield workflow, context
    for _, step in walk_steps(workflow.steps):  # a loop's body may hold `workflow:` steps
        if isinstance(step, WorkflowStep):
            inputs = pre_run_inputs(step, context)
            yield from family_contexts(step.child, nested_context(step.child, inputs, context))


def pre_run_inputs(step: WorkflowStep, context: Mapping[str, Any]) -> dict[str, Any]:
    """The included workflow's inputs as far as the run knows them before any step: each
    `with:` value that reads no step output, and the defaults of the others."""
    given: dict[str, Any] = {}
    for name, value in step.with_.items():
        try:
            given[name] = templating.render_value(thawed(value), context)
        except templating.TemplateError:
            continue  # reads a step's output: known only when the step runs
    try:
        return coerce_inputs(step.child, given)
    except InputError:  # a required input that comes from a step: the rest as given
        defaults = {
            name: thawed(spec.default)
            for name, spec in step.child.inputs.items()
            if spec.has_default
        }
        return {**defaults, **given}


def _rendered(
    workflow: Workflow, context: Mapping[str, Any], *, included: bool
) -> dict[str, McpServer]:
    try:
        return render_servers(workflow, servers_in_use(workflow), context)
    except ConfigurationError as error:
        if not included:
            raise
        raise ConfigurationError(
            f"{workflow.path}: {error.message}",
            hint="servers start before the first step: the settings of an included "
            "workflow's server may read the inputs its `with:` gives without reading a "
            "step's output, defaults and env",
        ) from None


def run_servers(workflow: Workflow, context: Mapping[str, Any]) -> dict[str, McpServer]:
    """The servers a run starts, rendered: the ones the steps of the workflow and of every
    workflow it includes use. A shared name must mean the same server."""
    servers: dict[str, McpServer] = {}
    owners: dict[str, Workflow] = {}
    for member, member_context in family_contexts(workflow, context):
        rendered = _rendered(member, member_context, included=member is not workflow)
        for name, server in rendered.items():
            if name in servers and servers[name] != server:
                raise ConfigurationError(
                    f"MCP server {name!r} is declared by {owners[name].path} and by "
                    f"{member.path} with settings that differ once rendered; a run starts "
                    "each server once, by name",
                    hint=f"declare {name!r} the same way in both files (with the same input "
                    "values), or give one of them another name",
                )
            servers.setdefault(name, server)
            owners.setdefault(name, member)
    return servers

"""The plan of a workflow: which fields are templates, what they read, what waits for what.

Computed once, by the same code, for the validator (from the raw, possibly broken mapping)
and for the executor (from the typed Workflow), so the two can never disagree about the
dependency graph, the template fields or the env names a run treats as secrets.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from jinja2 import nodes

from .. import templating
from .model import strings_in
from .source import JsonPath

if TYPE_CHECKING:
    from .model import Workflow

Getter = Callable[[str], Any]
"""Reads one key of a step or server as it is spelled in the file (`with`, `if`, ...)."""
Locator = Callable[[str], JsonPath]
"""Where the file spells one key of a step: the step itself, or the agent it came from."""

TEXT_KEYS = ("name", "system", "prompt", "ask")
"""Step fields that are one template each (rendered to text)."""
VALUE_KEYS = (
    "for_each",
    "with",
    "run",
    "cwd",
    "env",
    "system_from",
    "prompt_from",
    "embed",
    "images",
)
"""Step fields whose every string is a template (a lone `{{ expr }}` keeps its type)."""
CONDITION_KEY = "if"
SERVER_KEYS = ("command", "cwd", "url")
SERVER_LIST_KEYS = ("args", "roots")
SERVER_MAP_KEYS = ("env", "headers")


@dataclass(frozen=True)
class TemplateField:
    """One template-bearing field: where it is, its text, and what it refers to."""

    path: JsonPath
    text: str
    is_condition: bool = False
    tree: nodes.Template | None = None
    error: templating.TemplateSyntaxError | None = None
    refs: tuple[templating.Reference, ...] = ()

    @property
    def step_ids(self) -> set[str]:
        """Ids of the steps this field reads (`steps.<id>...`)."""
        return {
            ref.path[0]
            for ref in self.refs
            if ref.root == "steps" and ref.path and isinstance(ref.path[0], str)
        }


def parse_field(path: JsonPath, text: str, is_condition: bool = False) -> TemplateField:
    """Parse one field; a syntax error is kept on the field for the validator to report."""
    if not is_condition and not templating.is_template(text):
        return TemplateField(path, text)
    try:
        tree = templating.parse_condition(text) if is_condition else templating.parse_template(text)
    except templating.TemplateSyntaxError as error:
        return TemplateField(path, text, is_condition, error=error)
    return TemplateField(path, text, is_condition, tree, refs=tuple(templating.references(tree)))


def step_fields(get: Getter, at: Locator) -> Iterator[TemplateField]:
    """The template fields of one step, read through `get` and placed by `at`; values of the
    wrong type are skipped (the schema reports them)."""
    for key in TEXT_KEYS:
        if isinstance(get(key), str):
            yield parse_field(at(key), get(key))
    condition = get(CONDITION_KEY)
    if isinstance(condition, str):
        yield parse_field(at(CONDITION_KEY), condition, is_condition=True)
    for key in VALUE_KEYS:
        for path, text in strings_in(get(key), at(key)):
            yield parse_field(path, text)


def server_fields(get: Getter, here: JsonPath) -> Iterator[TemplateField]:
    """The template fields of one MCP server's settings."""
    for key in SERVER_KEYS:
        if isinstance(get(key), str):
            yield parse_field((*here, key), get(key))
    for key in SERVER_LIST_KEYS:
        values = get(key)
        for i, value in enumerate(values if isinstance(values, (list, tuple)) else ()):
            if isinstance(value, str):
                yield parse_field((*here, key, i), value)
    for key in SERVER_MAP_KEYS:
        table = get(key)
        for name, value in table.items() if isinstance(table, Mapping) else ():
            if isinstance(value, str):
                yield parse_field((*here, key, name), value)


@dataclass(frozen=True)
class StepPlan:
    """One step as the scheduler and the checks see it."""

    index: int
    id: str | None
    fields: tuple[TemplateField, ...]
    needs: tuple[str, ...]
    """`needs:` and the step a `continue:` names: what it waits for besides what it reads."""
    has_for_each: bool
    body: Plan | None = None
    """A loop step's nested steps, planned as a workflow of their own; `until:` is the
    body's one output field (read after its steps ran)."""

    @cached_property
    def reads(self) -> frozenset[str]:
        """Ids of the steps its templates read, and the outer steps its body reads."""
        own = frozenset(i for f in self.fields for i in f.step_ids)
        return own | self.body.outer_reads if self.body is not None else own

    @cached_property
    def waits_for(self) -> frozenset[str]:
        """The steps it waits for: `needs:` plus the steps it reads, never itself."""
        return (frozenset(self.needs) | self.reads) - {self.id}


@dataclass(frozen=True)
class Plan:
    steps: tuple[StepPlan, ...]
    server_fields: tuple[TemplateField, ...]
    output_fields: tuple[TemplateField, ...]
    included_env_names: frozenset[str] = frozenset()
    """The env names the workflows that `workflow:` steps include read: one run's secrets."""

    @cached_property
    def fields(self) -> tuple[TemplateField, ...]:
        """Every template field, those of nested steps included."""
        return (
            *(f for s in self.steps for f in s.fields),
            *(f for s in self.steps if s.body is not None for f in s.body.fields),
            *self.server_fields,
            *self.output_fields,
        )

    @cached_property
    def outer_reads(self) -> frozenset[str]:
        """Ids of the steps outside this plan that its fields read: what a loop step whose
        body this is waits for."""
        read = {i for f in self.output_fields for i in f.step_ids}
        read.update(i for s in self.steps for i in s.waits_for)
        return frozenset(read - set(self.index_of))

    @cached_property
    def env_names(self) -> frozenset[str]:
        """The environment variables the templates read (`env.NAME`): their values are
        secrets from the first event on, before any template has read them."""
        return self.included_env_names | frozenset(
            str(ref.path[0])
            for f in self.fields
            for ref in f.refs
            if ref.root == "env" and ref.path
        )

    @cached_property
    def index_of(self) -> dict[str, int]:
        """Step id -> index of its first step (a duplicate id is the validator's to report)."""
        found: dict[str, int] = {}
        for step in self.steps:
            if step.id is not None:
                found.setdefault(step.id, step.index)
        return found

    def dependencies(self) -> dict[str, frozenset[str]]:
        """For each step id, the ids of the known steps it waits for."""
        return dict(self._dependencies)

    @cached_property
    def _dependencies(self) -> dict[str, frozenset[str]]:
        return {
            s.id: frozenset(d for d in s.waits_for if d in self.index_of)
            for s in self.steps
            if s.id is not None
        }

    def order(self) -> list[str]:
        """Step ids in the order a one-at-a-time run takes them: file order, each step moved
        only as far as what it waits for requires. Deterministic, so logs, snapshots and
        results list steps in this order whatever the timing of a concurrent run."""
        return list(self._order)

    @cached_property
    def _order(self) -> tuple[str, ...]:
        waits = self._dependencies
        done: set[str] = set()
        order: list[str] = []
        pending = [s.id for s in self.steps if s.id is not None]
        while pending:
            ready = next((i for i in pending if waits[i] <= done), pending[0])  # a cycle: as is
            order.append(ready)
            done.add(ready)
            pending.remove(ready)
        return tuple(order)

    def graph(self) -> dict[int, set[int]]:
        """The same graph by step index, as the validator reports positions."""
        return {
            s.index: {self.index_of[d] for d in s.waits_for if d in self.index_of}
            for s in self.steps
        }

    def unordered_pairs(self) -> Iterator[tuple[StepPlan, StepPlan]]:
        """Pairs of steps neither of which waits, directly or not, for the other: they may
        run at the same time."""
        graph = self.graph()
        before = {s.index: _reachable(graph, s.index) for s in self.steps}
        for a in self.steps:
            for b in self.steps[a.index + 1 :]:
                if b.index not in before[a.index] and a.index not in before[b.index]:
                    yield a, b


def _reachable(graph: Mapping[int, Iterable[int]], start: int) -> set[int]:
    seen: set[int] = set()
    stack = list(graph.get(start, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(graph.get(node, ()))
    return seen


def cycles(graph: Mapping[int, Iterable[int]]) -> list[list[int]]:
    """Every distinct cycle a depth-first walk meets, each as the nodes on it in walk order.

    Iterative, so a long chain of steps cannot exhaust Python's recursion limit.
    """
    state: dict[int, int] = {}  # 1 = on the path, 2 = done
    found: list[list[int]] = []
    seen: set[frozenset[int]] = set()
    for root in sorted(graph):
        if root in state:
            continue
        path: list[int] = [root]
        pending: list[Iterator[int]] = [iter(sorted(graph.get(root, ())))]
        state[root] = 1
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(dep) == 1:
                cycle = path[path.index(dep) :]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif dep not in state:
                state[dep] = 1
                path.append(dep)
                pending.append(iter(sorted(graph.get(dep, ()))))
    return found


def _needs(value: Any) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)):
        return ()
    return tuple(v for v in values if isinstance(v, str))


def _key_path(here: JsonPath, key: str) -> JsonPath:
    return (*here, key)


def _mapping_get(value: Any) -> Getter:
    return value.get if isinstance(value, Mapping) else lambda _key: None


def _attribute_get(value: Any) -> Getter:
    """Reads a typed object by the file's key names (`with` is the attribute `with_`)."""
    return lambda key: getattr(value, f"{key}_" if keyword.iskeyword(key) else key, None)


def _getter(value: Any) -> Getter:
    """Reads raw data (the validator's) and typed objects (the executor's) alike."""
    return _mapping_get(value) if isinstance(value, Mapping) else _attribute_get(value)


def _body(loop: Any, here: JsonPath) -> Plan | None:
    """The plan of a `loop:`'s nested steps, with `until:` as its one output field."""
    if loop is None:
        return None
    get = _getter(loop)
    steps = get("steps")
    until = get("until")
    return _build(
        (
            (_getter(s), partial(_key_path, (*here, "steps", j)))
            for j, s in enumerate(steps if isinstance(steps, (list, tuple)) else ())
        ),
        {},
        {},
        (parse_field((*here, "until"), until, True),) if isinstance(until, str) else (),
    )


def _build(
    steps: Iterable[tuple[Getter, Locator]],
    servers: Mapping[str, Getter],
    outputs: Mapping[str, Any],
    after: tuple[TemplateField, ...] = (),
) -> Plan:
    step_plans = []
    for i, (get, at) in enumerate(steps):
        step_id = get("id")
        step_plans.append(
            StepPlan(
                index=i,
                id=step_id if isinstance(step_id, str) else None,
                fields=tuple(step_fields(get, at)),
                needs=_needs(get("needs")) + _needs(get("continue")),
                has_for_each=get("for_each") is not None,
                body=_body(get("loop"), at("loop")),
            )
        )
    return Plan(
        steps=tuple(step_plans),
        server_fields=tuple(
            f for name, get in servers.items() for f in server_fields(get, ("mcp_servers", name))
        ),
        output_fields=(
            *(parse_field(p, t) for p, t in strings_in(outputs, ("outputs",))),
            *after,
        ),
    )


def plan_data(
    steps: list[Any],
    servers: Mapping[str, Any],
    outputs: Mapping[str, Any],
    locate: Callable[[int, str], JsonPath],
) -> Plan:
    """The plan of a file's raw data, read defensively (the validator's view). The steps
    come with their prompt files read and their agents merged in; `locate` says where the
    file spells a key of step i (the step, its agent, or the key naming a prompt file)."""
    return _build(
        ((_mapping_get(s), partial(locate, i)) for i, s in enumerate(steps)),
        {name: _mapping_get(spec) for name, spec in servers.items()},
        outputs,
    )


def plan_workflow(workflow: Workflow) -> Plan:
    """The plan of a typed Workflow (the executor's view)."""
    included = frozenset(
        name for child in list(workflow.family())[1:] for name in child.plan.env_names
    )
    return replace(
        _build(
            (
                (_attribute_get(s), partial(_key_path, ("steps", i)))
                for i, s in enumerate(workflow.steps)
            ),
            {name: _attribute_get(spec) for name, spec in workflow.mcp_servers.items()},
            workflow.outputs,
        ),
        included_env_names=included,
    )

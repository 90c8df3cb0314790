"""The one sandboxed Jinja2 environment, and the reference extraction the validator uses.

Templates render field by field after YAML parsing, with strict undefined variables: a
typo fails loudly instead of becoming an empty string in a prompt. A field that is a single
`{{ expression }}` keeps the expression's native value (a list stays a list), so outputs and
tool arguments carry real data; anything else renders to text, with lists and mappings
written as JSON rather than Python reprs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from jinja2 import StrictUndefined, Undefined, meta, nodes
from jinja2.exceptions import (
    TemplateError,
    TemplateRuntimeError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOTS = ("inputs", "steps", "env", "workflow", "run")
ITEM_NAMES = ("item", "loop")
"""What a `for_each:` step adds to its own templates: the current item and its position."""

__all__ = [
    "ITEM_NAMES",
    "ROOTS",
    "Reference",
    "TemplateError",
    "TemplateSyntaxError",
    "UndefinedError",
    "evaluate",
    "is_template",
    "parse_condition",
    "parse_template",
    "references",
    "render",
    "render_text",
    "render_value",
    "unknown_names",
]


def _finalize(value: Any) -> Any:
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _tojson(value: Any, indent: int | None = None) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; prompts want the plain JSON.
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


@cache
def environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters["tojson"] = _tojson
    return env


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


def parse_template(text: str) -> nodes.Template:
    """Parse a template field; raises TemplateSyntaxError with the line inside the text."""
    return environment().parse(text)


def _condition_source(expression: str) -> str:
    """`if:` takes a bare expression; a fully wrapped `{{ ... }}` is accepted too."""
    stripped = expression.strip()
    if stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1:
        return stripped[2:-2]
    return expression


def parse_condition(expression: str) -> nodes.Template:
    """Parse an `if:` expression (as the body of a `{{ }}` so references can be walked)."""
    return environment().parse("{{ " + _condition_source(expression) + " }}")


@dataclass(frozen=True)
class Reference:
    """A use of a context variable, e.g. `steps.survey.output.modules`."""

    root: str
    path: tuple[str | int, ...]
    lineno: int

    @property
    def dotted(self) -> str:
        return ".".join([self.root, *map(str, self.path)])


def references(tree: nodes.Node) -> list[Reference]:
    """Every `inputs.*`, `steps.*`, `env.*`, `workflow.*`, `run.*` chain in a template.

    Attribute and constant-subscript chains are followed as far as they go, so
    `steps.a.output["x"]` gives ("a", "output", "x"); a dynamic subscript ends the chain.
    """
    found: list[Reference] = []

    def chain(node: nodes.Node) -> tuple[str, list[str | int]] | None:
        parts: list[str | int] = []
        while True:
            if isinstance(node, nodes.Getattr):
                parts.append(node.attr)
                node = node.node
            elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
                parts.append(node.arg.value)
                node = node.node
            else:
                break
        if isinstance(node, nodes.Name) and node.ctx == "load":
            return node.name, parts[::-1]
        return None

    def visit(node: nodes.Node) -> None:
        if isinstance(node, (nodes.Getattr, nodes.Getitem, nodes.Name)):
            found_chain = chain(node)
            if found_chain and found_chain[0] in ROOTS:
                found.append(Reference(found_chain[0], tuple(found_chain[1]), node.lineno))
                return
        for child in node.iter_child_nodes():
            visit(child)

    visit(tree)
    return found


def unknown_names(tree: nodes.Template) -> set[str]:
    """Variables a template reads that are neither context roots nor Jinja globals."""
    env = environment()
    return {
        name
        for name in meta.find_undeclared_variables(tree)
        if name not in ROOTS and name not in env.globals
    }


def _single_expression(tree: nodes.Template) -> nodes.Expr | None:
    body = tree.body
    if len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1:
        node = body[0].nodes[0]
        if not isinstance(node, nodes.TemplateData):
            return node
    return None


Renderer = Callable[[Mapping[str, Any]], Any]


@lru_cache(maxsize=4096)
def _compiled(text: str) -> Renderer:
    """A field compiled once: steps re-render the same prompts and fields on every run."""
    env = environment()
    if _single_expression(env.parse(text)) is not None:
        expression = env.compile_expression(_expression_source(text), undefined_to_none=False)
        return lambda context: _defined(expression(**context))
    template = env.from_string(text)
    return lambda context: template.render(**context)


@lru_cache(maxsize=1024)
def _compiled_condition(expression: str) -> Renderer:
    compiled = environment().compile_expression(
        _condition_source(expression), undefined_to_none=False
    )
    return lambda context: _defined(compiled(**context))


@lru_cache(maxsize=4096)
def _compiled_text(text: str) -> Renderer:
    template = environment().from_string(text)
    return lambda context: template.render(**context)


def _guarded(renderer: Renderer, context: Mapping[str, Any]) -> Any:
    """Run a compiled template; any error of the expression itself (a division by zero, `+`
    on None) becomes a TemplateRuntimeError, so every caller handles one kind of failure."""
    try:
        return renderer(context)
    except TemplateError:
        raise
    except Exception as error:
        raise TemplateRuntimeError(f"{type(error).__name__}: {error}") from error


def render(text: str, context: Mapping[str, Any]) -> Any:
    """Render a data field (outputs, tool arguments): a lone `{{ expr }}` keeps its native
    value, so a list stays a list."""
    if not is_template(text):
        return text
    return _guarded(_compiled(text), context)


def render_text(text: str, context: Mapping[str, Any]) -> str:
    """Render a text field (prompts, names, server settings): always a string, with lists and
    mappings written as JSON."""
    if not is_template(text):
        return text
    return str(_guarded(_compiled_text(text), context))


def _expression_source(text: str) -> str:
    """The source inside the `{{ }}` of a one-expression field; comments next to it drop out."""
    parts: list[str] = []
    inside = False
    for _, token, value in environment().lex(text):
        if token == "variable_end":
            break
        if inside:
            parts.append(value)
        inside = inside or token == "variable_begin"
    return "".join(parts)


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string inside a value (mappings and lists are walked)."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, Mapping):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [render_value(item, context) for item in value]
    return value


def evaluate(expression: str | bool, context: Mapping[str, Any]) -> Any:
    """Evaluate an `if:` condition."""
    if isinstance(expression, bool):
        return expression
    return _guarded(_compiled_condition(expression), context)


def _defined(value: Any) -> Any:
    """Expressions return Undefined instead of raising; make a missing name fail as it should."""
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises UndefinedError here
    return value

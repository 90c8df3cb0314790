"""The one sandboxed Jinja2 environment, and the reference extraction the validator uses.

Templates render field by field after YAML parsing, with strict undefined variables: a
typo fails loudly instead of becoming an empty string in a prompt. A field that is a single
`{{ expression }}` keeps the expression's native value (a list stays a list), so outputs and
tool arguments carry real data; anything else renders to text, with lists and mappings
written as JSON rather than Python reprs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
from jinja2.lexer import TOKEN_OPERATOR
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import vectors

ROOTS = ("inputs", "steps", "env", "workflow", "run")
ITEM_NAMES = ("item", "loop")
"""What a `for_each:` step adds to its own templates: the current item and its position."""

# Jinja parses, compiles and renders recursively, so a hostile template could exhaust Python's
# stack. These limits are far beyond any real template and well inside that stack, so a too
# deep template is refused the same way wherever it is parsed (validator, executor).
MAX_BRACKETS = 20
"""Brackets nesting in one template: the parser spends about 14 stack frames per level."""
MAX_DEPTH = 100
"""Depth of a parsed template's tree: nested blocks, operator chains, filters, attributes."""

__all__ = [
    "ITEM_NAMES",
    "ROOTS",
    "Reference",
    "TemplateError",
    "TemplateSyntaxError",
    "TemplateTooDeepError",
    "UndefinedError",
    "WholeEnvUse",
    "evaluate",
    "is_template",
    "parse_condition",
    "parse_template",
    "references",
    "render",
    "render_text",
    "render_value",
    "unknown_names",
    "whole_env_uses",
]


def _finalize(value: Any) -> Any:
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _tojson(value: Any, indent: int | None = None) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; prompts want the plain JSON.
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


_SAVED_IMAGE = re.compile(r"\[image content: [^\]\n]*?, saved to ([^\]\n]+)\]")
"""How a tool result names an image it saved in the run directory (runner/mcp_content.py)."""


def _saved_images(value: Any) -> list[str]:
    """The files of the images a tool result saved, in order: `images:` of a later step
    takes them (`{{ steps.shot.output | saved_images }}`). Text without any gives []."""
    texts = value if isinstance(value, (list, tuple)) else [value]
    return [path for text in texts for path in _SAVED_IMAGE.findall(str(text))]


@cache
def environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters["tojson"] = _tojson
    env.filters.update(vectors.FILTERS)
    env.filters["saved_images"] = _saved_images
    return env


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


class TemplateTooDeepError(TemplateSyntaxError):
    """A template nests deeper than lmflow allows; a syntax error with the line it happens on."""


_TOO_DEEP = (
    f"template nests more than {MAX_DEPTH} levels deep (blocks, operators, filters or attributes)"
)
_OPENING = {"(", "[", "{"}
_CLOSING = {")", "]", "}"}


def parse_template(text: str) -> nodes.Template:
    """Parse a template field; raises TemplateSyntaxError with the line inside the text, and
    TemplateTooDeepError for one nested too deeply to parse, compile or render safely."""
    depth = 0
    for lineno, token, value in environment().lex(text):
        if token != TOKEN_OPERATOR:
            continue
        depth += (value in _OPENING) - (value in _CLOSING)
        if depth > MAX_BRACKETS:
            raise TemplateTooDeepError(f"brackets nest more than {MAX_BRACKETS} deep", lineno)
    try:
        tree = environment().parse(text)
    except RecursionError:
        raise TemplateTooDeepError(_TOO_DEEP, 1) from None
    _check_depth(tree)
    return tree


def _check_depth(tree: nodes.Node) -> None:
    """Refuse a tree deeper than MAX_DEPTH (walked without recursion)."""
    pending = [(tree, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise TemplateTooDeepError(_TOO_DEEP, node.lineno)
        pending.extend((child, depth + 1) for child in node.iter_child_nodes())


def _condition_source(expression: str) -> str:
    """`if:` takes a bare expression; a fully wrapped `{{ ... }}` is accepted too."""
    stripped = expression.strip()
    if stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1:
        return stripped[2:-2]
    return expression


def parse_condition(expression: str) -> nodes.Template:
    """Parse an `if:` expression (as the body of a `{{ }}` so references can be walked)."""
    return parse_template("{{ " + _condition_source(expression) + " }}")


@dataclass(frozen=True)
class Reference:
    """A use of a context variable, e.g. `steps.survey.output.modules`."""

    root: str
    path: tuple[str | int, ...]
    lineno: int

    @property
    def dotted(self) -> str:
        return ".".join([self.root, *map(str, self.path)])


def references(tree: nodes.Node, roots: Sequence[str] = ROOTS) -> list[Reference]:
    """Every `inputs.*`, `steps.*`, `env.*`, `workflow.*`, `run.*` chain in a template
    (or of the other `roots` asked for, such as `loop`).

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

    pending: list[nodes.Node] = [tree]  # a stack, not recursion: trees can be deep
    while pending:
        node = pending.pop()
        if isinstance(node, (nodes.Getattr, nodes.Getitem, nodes.Name)):
            found_chain = chain(node)
            if found_chain and found_chain[0] in roots:
                found.append(Reference(found_chain[0], tuple(found_chain[1]), node.lineno))
                continue
        pending.extend(reversed(list(node.iter_child_nodes())))
    return found


@dataclass(frozen=True)
class WholeEnvUse:
    """A use of `env` other than reading one variable by a name written in the template:
    `env | list`, `for k in env`, `env[expression]`, or a method call such as `env.items()`
    (`method` is then the name called)."""

    lineno: int
    method: str | None = None


def whole_env_uses(tree: nodes.Node) -> list[WholeEnvUse]:
    """Every use of `env` that is not `env.NAME` or `env["NAME"]` read as a value.

    Walked without recursion: templates can nest deeper than Python's stack."""
    found: list[WholeEnvUse] = []
    stack: list[tuple[nodes.Node, tuple[nodes.Node | None, ...]]] = [(tree, ())]
    while stack:
        node, parents = stack.pop()
        if isinstance(node, nodes.Name) and node.name == "env" and node.ctx == "load":
            use = _whole_env_use(node, *parents[:2])
            if use is not None:
                found.append(use)
        for child in node.iter_child_nodes():
            stack.append((child, (node, *parents[:1])))
    return sorted(found, key=lambda use: use.lineno)


def _whole_env_use(
    name: nodes.Name, parent: nodes.Node | None = None, grandparent: nodes.Node | None = None
) -> WholeEnvUse | None:
    if isinstance(parent, nodes.Getattr) and parent.node is name:
        if isinstance(grandparent, nodes.Call) and grandparent.node is parent:
            return WholeEnvUse(name.lineno, parent.attr)
        return None
    if (
        isinstance(parent, nodes.Getitem)
        and parent.node is name
        and isinstance(parent.arg, nodes.Const)
        and isinstance(parent.arg.value, str)
    ):
        return None
    return WholeEnvUse(name.lineno)


def unknown_names(tree: nodes.Template) -> set[str]:
    """Variables a template reads that are neither context roots nor Jinja globals."""
    env = environment()
    with _compiling():  # finding the names runs Jinja's code generator
        undeclared = meta.find_undeclared_variables(tree)
    return {name for name in undeclared if name not in ROOTS and name not in env.globals}


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
    tree = parse_template(text)
    if _single_expression(tree) is not None:
        return _expression_renderer(_expression_source(text))
    return _template_renderer(tree)


@lru_cache(maxsize=1024)
def _compiled_condition(expression: str) -> Renderer:
    parse_condition(expression)  # the same depth limits as every other template
    return _expression_renderer(_condition_source(expression))


@lru_cache(maxsize=4096)
def _compiled_text(text: str) -> Renderer:
    return _template_renderer(parse_template(text))


@contextmanager
def _compiling() -> Iterator[None]:
    """Jinja's code generator recurses: a run's deeper stack must not turn a template that
    validated into a traceback."""
    try:
        yield
    except RecursionError:
        raise TemplateTooDeepError("template nests too deeply to compile", 1) from None


def _expression_renderer(source: str) -> Renderer:
    with _compiling():
        compiled = environment().compile_expression(source, undefined_to_none=False)
    return lambda context: _defined(compiled(**context))


def _template_renderer(tree: nodes.Template) -> Renderer:
    with _compiling():
        template = environment().from_string(tree)
    return lambda context: template.render(**context)


def _guarded(renderer: Renderer, context: Mapping[str, Any]) -> Any:
    """Run a compiled template; any error of the expression itself (a division by zero, `+`
    on None) becomes a TemplateRuntimeError, so every caller handles one kind of failure."""
    try:
        return renderer(context)
    except TemplateError:
        raise
    except RecursionError:
        raise TemplateRuntimeError(
            "rendering recursed too deeply (a macro that calls itself, or deeply nested data)"
        ) from None
    except NameError as error:
        if error.name not in ("inf", "nan"):
            raise TemplateRuntimeError(f"NameError: {error}") from error
        # Jinja writes constants into its generated code by repr: a literal beyond a float's
        # range (1e400) or a constant NaN comes out as a name that does not exist.
        raise TemplateRuntimeError(
            "a number in the template is too large for a float (or is not a number); write "
            "it as a string, or pass it as an input"
        ) from None
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

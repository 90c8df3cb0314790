"""The sandboxed Jinja2 environment: reference extraction, rendering, strictness, sandbox."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hostile import nested_ifs, nested_parentheses, plus_chain
from jinja2.exceptions import SecurityError

from runner import templating
from runner.templating import Reference

CONTEXT: dict[str, Any] = {
    "inputs": {"path": "src", "top": 3, "names": ["a", "é"], "meta": {"k": 1}},
    "steps": {"survey": {"output": {"modules": ["x.py", "y.py"]}, "status": "ok"}},
    "env": {"HOME": "/home/me"},
    "workflow": {"name": "triage"},
    "run": {"id": "r1"},
}


def refs(text: str) -> list[tuple[str, tuple[str | int, ...]]]:
    return [(r.root, r.path) for r in templating.references(templating.parse_template(text))]


# --- references ------------------------------------------------------------------------------


def test_references_follow_attribute_and_constant_subscript_chains() -> None:
    text = (
        "{{ steps.survey.output.modules[0] }} {{ inputs['path'] }} {{ env.HOME }}"
        "{% if workflow.name %}{{ run.id }}{% endif %}"
    )
    assert refs(text) == [
        ("steps", ("survey", "output", "modules", 0)),
        ("inputs", ("path",)),
        ("env", ("HOME",)),
        ("workflow", ("name",)),
        ("run", ("id",)),
    ]


def test_a_dynamic_subscript_ends_the_chain() -> None:
    assert refs("{{ steps[inputs.which].output }}") == [("steps", ()), ("inputs", ("which",))]


def test_references_inside_filters_loops_and_calls() -> None:
    text = (
        "{% for m in steps.survey.output.modules %}{{ m }}{% endfor %}"
        "{{ inputs.names | join(inputs.sep) }}"
    )
    assert refs(text) == [
        ("steps", ("survey", "output", "modules")),
        ("inputs", ("names",)),
        ("inputs", ("sep",)),
    ]


def test_reference_line_numbers_and_dotted_form() -> None:
    [ref] = templating.references(templating.parse_template("line one\n{{ steps.a.output.b }}"))
    assert ref == Reference("steps", ("a", "output", "b"), 2)
    assert ref.dotted == "steps.a.output.b"


def test_unknown_names_are_neither_roots_globals_nor_locals() -> None:
    tree = templating.parse_template(
        "{{ foo }} {{ inputs.x }} {{ range(3) | list }}"
        "{% for item in inputs.items %}{{ item }}{% endfor %}{% set n = 1 %}{{ n }}{{ bar.baz }}"
    )
    assert templating.unknown_names(tree) == {"foo", "bar"}


def test_is_template() -> None:
    assert templating.is_template("a {{ b }}")
    assert templating.is_template("{% if x %}y{% endif %}")
    assert templating.is_template("{# note #}")
    assert not templating.is_template("plain text with { braces }")


# --- rendering -------------------------------------------------------------------------------


def test_a_lone_expression_keeps_its_native_value() -> None:
    assert templating.render("{{ inputs.names }}", CONTEXT) == ["a", "é"]
    assert templating.render("{{ inputs.top + 1 }}", CONTEXT) == 4
    assert templating.render("{{ inputs.meta }}", CONTEXT) == {"k": 1}
    assert templating.render("{{- steps.survey.output.modules -}}", CONTEXT) == ["x.py", "y.py"]


def test_a_comment_next_to_a_lone_expression_is_ignored() -> None:
    assert templating.render("{{ inputs.top }}{# how many #}", CONTEXT) == 3


def test_text_around_an_expression_renders_to_a_string() -> None:
    assert templating.render("top {{ inputs.top }}", CONTEXT) == "top 3"
    assert templating.render(" {{ inputs.top }} ", CONTEXT) == " 3 "


def test_lists_and_mappings_inside_text_are_written_as_json() -> None:
    rendered = templating.render("names: {{ inputs.names }}, meta: {{ inputs.meta }}", CONTEXT)
    assert rendered == 'names: ["a", "é"], meta: {"k": 1}'


def test_tojson_does_not_escape_for_html() -> None:
    assert templating.render('{{ "<a & b>" | tojson }}', CONTEXT) == '"<a & b>"'


def test_plain_text_is_returned_unchanged() -> None:
    assert templating.render("no templates here", CONTEXT) == "no templates here"


def test_render_value_walks_lists_and_mappings() -> None:
    value = {"path": "{{ inputs.path }}/README.md", "all": ["{{ inputs.names }}", 7]}
    assert templating.render_value(value, CONTEXT) == {
        "path": "src/README.md",
        "all": [["a", "é"], 7],
    }


# --- strictness and the sandbox --------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["{{ inputs.missing }}", "before {{ inputs.missing }} after", "{{ nothing }}"]
)
def test_undefined_names_fail_loudly(text: str) -> None:
    with pytest.raises(templating.UndefinedError):
        templating.render(text, CONTEXT)


def test_undefined_names_fail_inside_conditions_too() -> None:
    with pytest.raises(templating.UndefinedError):
        templating.evaluate("steps.other.output", CONTEXT)


@pytest.mark.parametrize(
    "text",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ inputs.names.append('x') }}",
        "{{ inputs.meta.update(k=2) }}",
    ],
)
def test_the_sandbox_blocks_unsafe_access_and_mutation(text: str) -> None:
    with pytest.raises(SecurityError):
        templating.render(text, CONTEXT)
    assert CONTEXT["inputs"]["names"] == ["a", "é"] and CONTEXT["inputs"]["meta"] == {"k": 1}


def test_syntax_errors_carry_the_line_inside_the_field() -> None:
    with pytest.raises(templating.TemplateSyntaxError) as raised:
        templating.parse_template("line one\nline two {{ inputs.x \n")
    assert raised.value.lineno in (2, 3)


# --- if: conditions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("steps.survey.output.modules | length > 1", True),
        ("{{ steps.survey.output.modules | length > 1 }}", True),
        ("  {{ steps.survey.status == 'failed' }}  ", False),
        ("inputs.top >= 3 and 'a' in inputs.names", True),
        (False, False),
        (True, True),
    ],
)
def test_conditions_accept_bare_and_wrapped_expressions(condition, expected: bool) -> None:
    assert templating.evaluate(condition, CONTEXT) is expected


def test_a_wrapped_condition_parses_with_its_references() -> None:
    tree = templating.parse_condition("{{ steps.survey.status == 'ok' }}")
    assert [r.dotted for r in templating.references(tree)] == ["steps.survey.status"]


def test_a_condition_with_two_expressions_is_not_unwrapped() -> None:
    with pytest.raises(templating.TemplateSyntaxError):
        templating.parse_condition("{{ inputs.a }} and {{ inputs.b }}")


# --- templates nested too deeply (issue 8: RecursionError tracebacks) --------------------------


@pytest.mark.parametrize(
    "text",
    [
        "{{ " + nested_parentheses(69) + " }}",
        "{{ " + plus_chain(488) + " }}",
        nested_ifs(242),
        "{{ " + "[" * 21 + "]" * 21 + " }}",
        "{{ " + "not " * 600 + "x }}",
        "{{ inputs.path" + " | upper" * 150 + " }}",
    ],
)
def test_a_too_deep_template_is_a_template_error_wherever_it_is_used(text: str) -> None:
    for use in (
        lambda: templating.parse_template(text),
        lambda: templating.render(text, CONTEXT),
        lambda: templating.render_text(text, CONTEXT),
    ):
        with pytest.raises(templating.TemplateTooDeepError, match="nest") as caught:
            use()
        assert isinstance(caught.value, templating.TemplateSyntaxError)
        assert caught.value.lineno >= 1


@pytest.mark.parametrize("condition", [nested_parentheses(69), plus_chain(488)])
def test_a_too_deep_condition_is_a_template_error(condition: str) -> None:
    with pytest.raises(templating.TemplateTooDeepError):
        templating.parse_condition(condition)
    with pytest.raises(templating.TemplateTooDeepError):
        templating.evaluate(condition, CONTEXT)


def test_the_line_of_a_too_deep_tree_is_where_it_gets_too_deep() -> None:
    text = "line one\n{{ " + plus_chain(300) + " }}"
    with pytest.raises(templating.TemplateTooDeepError) as caught:
        templating.parse_template(text)
    assert caught.value.lineno == 2


def test_templates_just_inside_the_limits_parse_render_and_list_their_references() -> None:
    brackets = "{{ " + nested_parentheses(templating.MAX_BRACKETS - 1) + " }}"
    assert templating.render(brackets, CONTEXT) == 1
    chain = "{{ inputs.top" + " + inputs.top" * 60 + " }}"
    assert templating.render(chain, CONTEXT) == 3 * 61
    assert refs(chain) == [("inputs", ("top",))] * 61


def test_a_template_compiled_on_a_deeper_stack_fails_as_a_template_error() -> None:
    """The run's stack is deeper than the validator's: a template that validated must still
    fail as a TemplateError there, never as a RecursionError."""
    text = "{{ " + nested_parentheses(templating.MAX_BRACKETS) + " + 7 }}"

    def deep(levels: int) -> Any:
        return deep(levels - 1) if levels else templating.render(text, CONTEXT)

    with pytest.raises(templating.TemplateError):
        deep(sys.getrecursionlimit() - 150)


def test_rendering_that_recurses_forever_is_a_runtime_template_error() -> None:
    text = "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"
    with pytest.raises(templating.TemplateRuntimeError, match="recursed too deeply"):
        templating.render_text(text, CONTEXT)


@pytest.mark.parametrize("text", ["{{ [1e400] }}", "{{ [1.0] | cosine(['nan' | float]) }}"])
def test_a_constant_beyond_a_float_says_so_instead_of_a_missing_name(text: str) -> None:
    """Jinja writes constants into its code by repr, so 1e400 becomes the name `inf`."""
    with pytest.raises(templating.TemplateRuntimeError, match="too large for a float") as raised:
        templating.render(text, CONTEXT)
    assert "NameError" not in str(raised.value)

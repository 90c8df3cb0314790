"""Property: whatever the input, `lmflow validate` ends with exit 0 or 2 and readable problems.

Valid workflows are mutated the ways people break them (keys deleted or added, values of the
wrong type, copied steps, half-typed templates, a file cut off mid-save); random YAML-ish
text and random bytes come on top, and templates and YAML nested deep enough to exhaust a
recursive parser. The `--inputs` fuzzer does the same for input files and `-i` pairs. No
input may raise or print a traceback.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile import (
    ALIAS_BOMB,
    ALIAS_LOOP,
    nested_block_yaml,
    nested_ifs,
    nested_list,
    nested_parentheses,
    plus_chain,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.executor import coerce_inputs
from runner.runtime import read_inputs
from runner.spec import check_file, load_workflow

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),  # the same examples on every CI run
    suppress_health_check=[HealthCheck.too_slow],
)

RICH = """\
version: 1
name: repo-triage
lmstudio: {base_url: "http://localhost:1234", token_env: LM_API_TOKEN, timeout: 30}
models: {coder: qwen/qwen3-coder-30b, thinker: mistralai/magistral-small-2509}
defaults: {model: coder, max_rounds: 5, temperature: 0.2, max_tokens: -1, timeout: 600}
inputs:
  path: {type: string, default: ".", description: Directory to survey}
  top: {type: integer, default: 3, minimum: 1, maximum: 10}
  mode: {type: string, enum: [quick, deep]}
mcp_servers:
  fs:
    command: npx
    args: ["-y", "@modelcontextprotocol/server-filesystem", "{{ inputs.path }}"]
    env: {NODE_ENV: production}
  search:
    url: http://127.0.0.1:8931/mcp
    headers: {Authorization: "Bearer {{ env.SEARCH_TOKEN }}"}
steps:
  - id: readme
    tool: fs.read_text_file
    with: {path: "{{ inputs.path }}/README.md"}
  - id: survey
    mcp: [fs, search]
    tools: [list_directory, fs.read_text_file]
    tool_choice: auto
    system: You are a careful reviewer.
    prompt: "README: {{ steps.readme.output }}. Survey {{ inputs.path }}."
  - id: risks
    model: thinker
    needs: [survey]
    prompt: "Name the {{ inputs.top }} riskiest modules from {{ steps.survey.output }}"
    output_schema:
      type: object
      properties: {modules: {type: array, items: {type: string}}}
      required: [modules]
  - id: remember
    if: steps.risks.output.modules | length > 0
    continue_on_error: true
    prompt: "{% for m in steps.risks.output.modules %}- {{ m }}\\n{% endfor %}"
outputs:
  modules: "{{ steps.risks.output.modules }}"
"""

SMALL = """\
version: 1
defaults: {model: qwen/qwen3-8b}
steps:
  - id: hello
    prompt: Say hello.
"""

BASES = [yaml.safe_load(RICH), yaml.safe_load(SMALL)]

KNOWN_KEYS = [
    "version", "name", "steps", "id", "prompt", "tool", "with", "mcp", "tools", "needs", "if",
    "model", "output_schema", "inputs", "type", "default", "enum", "url", "command", "args",
    "headers", "env", "x-note", "<<", "on", "",
]  # fmt: skip

TEMPLATE_PIECES = [
    "{{", "}}", "{%", "%}", "{#", "#}", " ", "steps", "inputs", "env", "workflow", "run", ".",
    "output", "status", "survey", "readme", "path", "missing", "|", "length", "tojson", "nope",
    "if", "endif", "for", "in", "endfor", "(", ")", "[", "]", "'", '"', "0", ">", "==", "\n",
    "__class__", "é",
]  # fmt: skip

YAML_PIECES = [
    "version: 1\n", "steps:\n", "  - id: a\n", "    prompt: ", "- ", ": ", "\n", "  ", "\t",
    "{", "}", "[", "]", ",", "'", '"', "|\n", ">-\n", "#", "&a ", "*a", "!tag ", "!!str ",
    "<<: ", "---\n", "...\n", "? ", "%YAML 1.1\n", "{{ inputs.x }}", "x", "1", "-1.5e3", "~",
    "null", "yes", "2024-01-02", "\\", "\ufeff", "\x00", "é", "\u2028",
]  # fmt: skip

LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.sampled_from(KNOWN_KEYS), st.integers(0, 2), max_size=2),
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("property")


def assert_handled(path: Path, lmflow_cli) -> None:
    """The validator's whole contract for one file, directly and through the CLI."""
    workflow, problems = check_file(path)
    errors = [p for p in problems if p.is_error]
    assert all(p.message and p.rule and p.line >= 1 and p.col >= 1 for p in problems)
    assert (workflow is None) == bool(errors)
    if workflow is not None:
        workflow.models_in_use()
    outcome = lmflow_cli("validate", "--offline", "--format", "json", str(path))
    assert outcome.exit_code == (2 if errors else 0)
    payload = json.loads(outcome.stdout)
    assert payload["valid"] is not bool(errors)
    assert payload["files"][0]["problems"] == [p.as_dict() for p in problems]


# --- mutations of valid workflows ------------------------------------------------------------


def containers(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every mapping and list inside `value` (the root included)."""
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        found.append(path)
        for key, item in value.items():
            found.extend(containers(item, (*path, key)))
    elif isinstance(value, list):
        found.append(path)
        for i, item in enumerate(value):
            found.extend(containers(item, (*path, i)))
    return found


def at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def mutate(data: Any, draw: st.DrawFn) -> Any:
    """One mutation, in place where possible; returns the (possibly replaced) document."""
    places = containers(data)
    if not places:
        return draw(LEAVES)
    parent = at(data, draw(st.sampled_from(places)))
    slots = list(parent) if isinstance(parent, dict) else list(range(len(parent)))
    kind = draw(st.sampled_from(["delete", "retype", "insert", "copy_step", "template"]))
    if kind == "insert" and isinstance(parent, dict):
        parent[draw(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8)))] = draw(LEAVES)
    elif kind == "insert":
        parent.insert(draw(st.integers(0, len(parent))), draw(LEAVES))
    elif kind == "copy_step" and isinstance(data, dict) and isinstance(data.get("steps"), list):
        steps = data["steps"]
        if steps:
            steps.insert(
                draw(st.integers(0, len(steps))), copy.deepcopy(draw(st.sampled_from(steps)))
            )
    elif not slots:
        return data
    elif kind == "delete":
        del parent[draw(st.sampled_from(slots))]
    elif kind == "retype":
        parent[draw(st.sampled_from(slots))] = draw(LEAVES)
    else:
        slot = draw(st.sampled_from(slots))
        pieces = draw(st.lists(st.sampled_from(TEMPLATE_PIECES), max_size=12))
        old = parent[slot] if isinstance(parent[slot], str) else ""
        cut = draw(st.integers(0, len(old)))
        parent[slot] = old[:cut] + "".join(pieces) + old[cut:]
    return data


@st.composite
def mutated_workflows(draw: st.DrawFn) -> str:
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        data = mutate(data, draw)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]  # the editor saved half the file
    return text


@SETTINGS
@given(text=mutated_workflows())
def test_mutated_workflows_are_always_handled(text: str, workdir: Path, lmflow_cli) -> None:
    path = workdir / "mutated.yaml"
    path.write_text(text, encoding="utf-8")
    assert_handled(path, lmflow_cli)


def test_the_unmutated_bases_are_valid(workdir: Path) -> None:
    for text in (RICH, SMALL):
        path = workdir / "base.yaml"
        path.write_text(text, encoding="utf-8")
        assert check_file(path)[1] == []


# --- random text and bytes -------------------------------------------------------------------


@SETTINGS
@given(
    text=st.one_of(
        st.lists(st.sampled_from(YAML_PIECES), max_size=40).map("".join),
        st.text(max_size=300),
    )
)
def test_random_yaml_text_is_always_handled(text: str, workdir: Path, lmflow_cli) -> None:
    path = workdir / "random.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert_handled(path, lmflow_cli)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes_are_always_handled(data: bytes, workdir: Path, lmflow_cli) -> None:
    path = workdir / "random.yaml"
    path.write_bytes(data)
    assert_handled(path, lmflow_cli)


# --- deep nesting: templates and YAML (issue 8) ----------------------------------------------

DEEP_TEMPLATES = st.one_of(
    st.integers(0, 120).map(lambda n: "{{ " + nested_parentheses(n) + " }}"),
    st.integers(1, 600).map(lambda n: "{{ " + plus_chain(n) + " }}"),
    st.integers(0, 300).map(nested_ifs),
    st.integers(0, 700).map(lambda n: "{{ " + "not " * n + "true }}"),
    st.integers(0, 300).map(lambda n: "{{ inputs.path" + " | upper" * n + " }}"),
    st.integers(0, 300).map(lambda n: "{{ " + "[" * n + "]" * n + " }}"),
)


@st.composite
def deeply_templated_workflows(draw: st.DrawFn) -> str:
    data = copy.deepcopy(BASES[0])
    step = data["steps"][draw(st.integers(0, len(data["steps"]) - 1))]
    template = draw(DEEP_TEMPLATES)
    if draw(st.booleans()):
        step["prompt"] = template
    else:  # a condition is a bare expression
        step["if"] = template.removeprefix("{{ ").removesuffix(" }}")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000)


@SETTINGS
@given(text=deeply_templated_workflows())
def test_deeply_nested_templates_are_always_handled(text: str, workdir: Path, lmflow_cli) -> None:
    path = workdir / "deep-template.yaml"
    path.write_text(text, encoding="utf-8")
    assert_handled(path, lmflow_cli)


DEEP_YAML = st.one_of(
    st.integers(0, 400).map(lambda n: "version: 1\nsteps: " + nested_list(n) + "\n"),
    st.integers(0, 200).map(lambda n: "version: 1\nx-deep:\n" + nested_block_yaml(n)),
    st.integers(0, 200).map(lambda n: "version: 1\nx-a: " + "{a: " * n + "1" + "}" * n + "\n"),
    st.sampled_from([ALIAS_BOMB, ALIAS_LOOP, "version: 1\nsteps: &s [{id: a, x: *s}]\n"]),
)


@settings(SETTINGS, max_examples=60)
@given(text=DEEP_YAML)
def test_deeply_nested_yaml_is_always_handled(text: str, workdir: Path, lmflow_cli) -> None:
    path = workdir / "deep.yaml"
    path.write_text(text, encoding="utf-8")
    assert_handled(path, lmflow_cli)


# --- the `--inputs` fuzzer: whatever the file and the -i pairs, exit 0 or 2 ----------------

INPUTS_WORKFLOW = """\
version: 1
defaults: {model: qwen/qwen3-8b}
inputs:
  text: {type: string, default: x}
  count: {type: integer, default: 1, minimum: 0}
  ratio: {type: number, default: 0.5, minimum: 0, maximum: 1}
  flag: {type: boolean, default: false}
  names: {type: array, default: []}
  options: {type: object, default: {}}
steps:
  - id: s
    prompt: "{{ inputs.text }} {{ inputs.count }} {{ inputs.names }} {{ inputs.options }}"
"""
INPUT_NAMES = ["text", "count", "ratio", "flag", "names", "options", "nope"]
NUMBERISH = [
    "0", "-3", "1_0", "٣", "+3", "nan", "NaN", "inf", "-Infinity", "1e999", "0x10", "1.5",
    "1e-3", "007", " 4 ", "true", "", "[]", "{}", "[NaN]", '{"a": 1e999}',
]  # fmt: skip

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
        st.dates().map(str),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
INPUT_VALUES = st.one_of(
    st.sampled_from(NUMBERISH),
    st.text(max_size=12),
    JSON_VALUES.map(lambda v: json.dumps(v)),
    st.integers(0, 1200).map(nested_list),
)
INPUT_FILES = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(INPUT_NAMES), JSON_VALUES, max_size=4).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True)
    ),
    st.dictionaries(st.sampled_from(INPUT_NAMES), JSON_VALUES, max_size=4).map(json.dumps),
    st.lists(st.sampled_from(YAML_PIECES), max_size=30).map("".join),
    st.integers(0, 1200).map(lambda n: "names: " + nested_list(n) + "\n"),
    st.integers(0, 200).map(lambda n: "options:\n" + nested_block_yaml(n)),
    st.sampled_from([ALIAS_BOMB, ALIAS_LOOP, "text: 2024-01-02\n", "ratio: .nan\n"]),
)


@settings(SETTINGS, max_examples=80)
@given(
    file_text=INPUT_FILES,
    pairs=st.lists(st.tuples(st.sampled_from(INPUT_NAMES), INPUT_VALUES), max_size=3),
)
def test_any_inputs_file_and_pairs_end_in_exit_0_or_2(
    file_text: str | None, pairs: list[tuple[str, str]], workdir: Path, lmflow_cli
) -> None:
    workflow = workdir / "inputs-workflow.yaml"
    workflow.write_text(INPUTS_WORKFLOW, encoding="utf-8")
    args = ["tools", str(workflow)]  # reads and checks the inputs; no server, no model
    if file_text is not None:
        inputs = workdir / "inputs.yaml"
        inputs.write_text(file_text, encoding="utf-8", errors="surrogatepass")
        args += ["--inputs", str(inputs)]
    for name, value in pairs:
        args += ["-i", f"{name}={value}"]
    outcome = lmflow_cli(*args)  # an exception that is not an lmflow error fails here
    assert outcome.exit_code in (0, 2), outcome.stderr
    if outcome.exit_code == 2:
        assert outcome.stderr.strip()
    else:  # what a run would log as run_started must be plain JSON
        raw = read_inputs(
            workdir / "inputs.yaml" if file_text is not None else None,
            [f"{name}={value}" for name, value in pairs],
        )
        json.dumps(coerce_inputs(load_workflow(workflow), raw), allow_nan=False)

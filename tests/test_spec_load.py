"""The loader (YAML -> data + positions) and the typed, frozen Workflow model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest
from hostile import ALIAS_LOOP, nested_block_yaml, nested_list

from runner.errors import WorkflowInvalidError
from runner.spec import load_workflow, parse_document, read_document
from runner.spec.load import MAX_FILE_BYTES, MAX_NESTING
from runner.spec.model import AgentStep, HttpServer, StdioServer, ToolStep
from runner.spec.source import Position

SMALL = """\
version: 1
name: triage
steps:
  - id: survey
    prompt: "Survey {{ inputs.path }}"
    mcp: [fs, memory]
"""


def rules(text: str) -> list[str]:
    return [p.rule for p in parse_document(text).problems]


# --- positions -------------------------------------------------------------------------------


def test_values_and_keys_have_their_line_and_column() -> None:
    source = parse_document(SMALL).source
    assert (source.position(("name",)).line, source.position(("name",)).col) == (2, 7)
    assert source.key_position(("name",)) == Position(2, 1, 11, 15)
    prompt = source.position(("steps", 0, "prompt"))
    assert (prompt.line, prompt.col) == (5, 13)
    assert source.raw(("steps", 0, "prompt")) == '"Survey {{ inputs.path }}"'
    second_server = source.position(("steps", 0, "mcp", 1))
    assert (second_server.line, second_server.col) == (6, 15)
    assert (source.position(("steps", 0)).line, source.position(("steps", 0)).col) == (4, 5)


def test_a_missing_path_falls_back_to_the_nearest_ancestor() -> None:
    source = parse_document(SMALL).source
    assert source.position(("steps", 0, "model")) == source.position(("steps", 0))
    assert source.key_position(("steps", 0, "model")) == source.position(("steps", 0))
    assert (source.position(("nowhere", 3)).line, source.position(("nowhere", 3)).col) == (1, 1)


def test_offset_position_counts_lines_and_columns() -> None:
    source = parse_document(SMALL).source
    offset = SMALL.index("inputs.path")
    assert (source.offset_position(offset).line, source.offset_position(offset).col) == (5, 24)


# --- YAML pitfalls ---------------------------------------------------------------------------


def test_duplicate_keys_are_reported_and_the_first_value_is_kept() -> None:
    doc = parse_document("version: 1\nname: first\nsteps: []\nname: second\n")
    [problem] = doc.problems
    assert (problem.rule, problem.line, problem.col) == ("duplicate-key", 4, 1)
    assert "first at line 2, column 1" in problem.message
    assert doc.data["name"] == "first"


def test_duplicate_keys_are_found_at_any_depth() -> None:
    doc = parse_document("a:\n  b:\n    c: 1\n    c: 2\n")
    assert [(p.rule, p.line) for p in doc.problems] == [("duplicate-key", 4)]


def test_yaml_1_1_keys_stay_as_written() -> None:
    doc = parse_document("on: push\nyes: 1\nno: 2\nnull: 3\n1: 4\n~: 5\n")
    assert list(doc.data) == ["on", "yes", "no", "null", "1", "~"]
    assert doc.problems == []


def test_dates_and_times_stay_strings() -> None:
    data = parse_document("day: 2024-01-02\nwhen: 2024-01-02T10:00:00Z\n").data
    assert data == {"day": "2024-01-02", "when": "2024-01-02T10:00:00Z"}


def test_scalars_keep_their_yaml_types() -> None:
    data = parse_document("i: 3\nf: 0.5\nb: true\nn: ~\ns: '3'\nhex: 0x1F\n").data
    assert data == {"i": 3, "f": 0.5, "b": True, "n": None, "s": "3", "hex": 31}


def test_alias_bomb_stops_with_yaml_too_large() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    doc = parse_document("\n".join(lines) + "\n")
    assert [p.rule for p in doc.problems] == ["yaml-too-large"]
    assert doc.data is None


def test_small_aliases_are_fine() -> None:
    doc = parse_document("base: &b {x: 1}\ncopy: *b\n")
    assert doc.problems == []
    assert doc.data == {"base": {"x": 1}, "copy": {"x": 1}}


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,
        "x: " + "{a: " * 700 + "1" + "}" * 700,
        "".join("  " * i + f"k{i}:\n" for i in range(3000)),
    ],
    ids=["flow-lists", "flow-maps", "block-maps"],
)
def test_deep_nesting_is_a_problem_not_a_crash(text: str) -> None:
    doc = parse_document(text)
    assert doc.data is None
    assert [p.rule for p in doc.problems] in (["yaml-too-deep"], ["yaml-syntax"])
    assert "nesting" in doc.problems[0].message


def test_nul_byte_is_reported_where_it_is() -> None:
    [problem] = parse_document("version: 1\nname: a\x00b\n").problems
    assert (problem.rule, problem.line, problem.col) == ("not-text", 2, 8)


def test_non_utf8_bytes_are_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\nname: café\n".encode("latin-1"))
    [problem] = read_document(path).problems
    assert (problem.rule, problem.line) == ("not-utf8", 2)
    assert "0xe9" in problem.message


def test_a_file_over_two_megabytes_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    [problem] = read_document(path).problems
    assert problem.rule == "file-too-large"
    assert f"{MAX_FILE_BYTES:,}" in problem.message


def test_a_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + SMALL.encode())
    doc = read_document(path)
    assert doc.problems == []
    assert doc.data["name"] == "triage"
    assert doc.source.position(("name",)).line == 2


def test_two_documents_are_refused_at_the_separator() -> None:
    [problem] = parse_document("version: 1\n---\nversion: 1\n").problems
    assert (problem.rule, problem.line, problem.col) == ("multiple-documents", 2, 1)


def test_one_explicit_document_is_fine() -> None:
    doc = parse_document("---\nversion: 1\n...\n")
    assert (doc.data, doc.problems) == ({"version": 1}, [])


@pytest.mark.parametrize(
    "text", ["", "   \n", "# only a comment\n", "---\n", "null\n", "---\n...\n---\n"]
)
def test_an_empty_document_is_reported(text: str) -> None:
    assert rules(text) == ["empty-file"]


def test_merge_keys_and_custom_tags_are_refused() -> None:
    assert rules("a: &a {x: 1}\nb:\n  <<: *a\n") == ["yaml-merge-key"]
    assert rules("token: !env SECRET\n") == ["yaml-tag"]
    assert rules("? [a, b]\n: 1\n") == ["non-scalar-key"]


def test_a_syntax_error_has_a_position_and_a_hint() -> None:
    [problem] = parse_document("steps:\n  - id: a\n    prompt: Note: quote me\n").problems
    assert (problem.rule, problem.line, problem.col) == ("yaml-syntax", 3, 17)
    assert problem.hint == "a value that contains ': ' must be quoted"


def test_an_unclosed_quote_is_placed_at_its_opening_naming_where_the_parser_gave_up() -> None:
    text = 'version: 1\nname: x\nsteps:\n  - id: a\n    prompt: "unterminated\n  - id: b\n'
    [problem] = parse_document(text + "    prompt: x\n").problems
    assert (problem.rule, problem.line, problem.col) == ("yaml-syntax", 5, 13)
    assert problem.message.endswith("(the parser gave up at 8:1)")
    assert problem.hint is not None and problem.hint.startswith("close the quote")


def test_an_unclosed_bracket_is_placed_at_its_opening() -> None:
    [problem] = parse_document("steps:\n  - id: a\n    needs: [x, y\n    prompt: hi\n").problems
    assert (problem.line, problem.col) == (3, 12)
    assert "flow sequence" in problem.message and "gave up at 4:11" in problem.message


def test_an_unreadable_path_is_a_problem(tmp_path: Path) -> None:
    [problem] = read_document(tmp_path).problems  # a directory cannot be read as a file
    assert problem.rule == "unreadable"


# --- the typed model -------------------------------------------------------------------------

WORKFLOW = """\
version: 1
name: repo-triage
description: Survey a repository.
lmstudio:
  base_url: http://localhost:1234
models:
  coder: qwen/qwen3-coder-30b
  thinker: mistralai/magistral-small-2509
  spare: google/gemma-3-270m
defaults:
  model: coder
  temperature: 0.2
inputs:
  path: {type: string, default: "."}
  top: {type: integer, minimum: 1}
mcp_servers:
  fs:
    command: npx
    args: ["-y", "@modelcontextprotocol/server-filesystem", "{{ inputs.path }}"]
  search:
    url: http://127.0.0.1:8931/mcp
    headers: {Authorization: "Bearer {{ env.SEARCH_TOKEN }}"}
steps:
  - id: readme
    tool: fs.read_text_file
    with: {path: "{{ inputs.path }}/README.md"}
  - id: survey
    mcp: [fs]
    prompt: "Survey: {{ steps.readme.output }}"
  - id: risks
    model: thinker
    needs: survey
    prompt: "Name {{ inputs.top }} risks."
    output_schema:
      type: object
      properties: {modules: {type: array, items: {type: string}}}
  - id: polish
    model: openai/gpt-oss-20b
    prompt: "Polish: {{ steps.risks.output.modules | tojson }}"
outputs:
  modules: "{{ steps.risks.output.modules }}"
"""


@pytest.fixture
def workflow(tmp_path: Path):
    path = tmp_path / "triage.yaml"
    path.write_text(WORKFLOW, encoding="utf-8")
    return load_workflow(path)


def test_workflow_fields(workflow) -> None:
    assert (workflow.name, workflow.version, workflow.description) == (
        "repo-triage",
        1,
        "Survey a repository.",
    )
    assert workflow.lmstudio.base_url == "http://localhost:1234"
    assert workflow.lmstudio.token_env == "LM_API_TOKEN"
    assert (workflow.defaults.model, workflow.defaults.temperature) == ("coder", 0.2)
    assert [s.id for s in workflow.steps] == ["readme", "survey", "risks", "polish"]
    assert workflow.inputs["path"].default == "." and not workflow.inputs["path"].required
    assert workflow.inputs["top"].required and workflow.inputs["top"].minimum == 1


def test_steps_and_servers_are_typed(workflow) -> None:
    readme, survey, risks, _ = workflow.steps
    assert isinstance(readme, ToolStep) and readme.kind == "tool"
    assert (readme.tool_server, readme.tool_name) == ("fs", "read_text_file")
    assert readme.with_["path"] == "{{ inputs.path }}/README.md"
    assert isinstance(survey, AgentStep) and survey.kind == "agent"
    assert isinstance(risks, AgentStep)
    assert survey.mcp == ("fs",) and survey.tools is None
    assert risks.needs == ("survey",)
    assert risks.output_schema["properties"]["modules"]["type"] == "array"
    fs, search = workflow.mcp_servers["fs"], workflow.mcp_servers["search"]
    assert isinstance(fs, StdioServer) and fs.args[-1] == "{{ inputs.path }}"
    assert isinstance(search, HttpServer) and search.timeout == 60.0


def test_the_model_is_frozen(workflow) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        workflow.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        workflow.steps[0].prompt = "changed"
    with pytest.raises(TypeError):
        workflow.inputs["new"] = workflow.inputs["path"]  # type: ignore[index]
    with pytest.raises(TypeError):
        workflow.steps[2].output_schema["type"] = "array"  # type: ignore[index]
    assert isinstance(workflow.models, MappingProxyType)
    assert isinstance(workflow.mcp_servers["fs"].args, tuple)


def test_aliases_resolve_to_model_ids(workflow) -> None:
    readme, survey, risks, polish = workflow.steps
    assert workflow.step_model(readme) is None
    assert workflow.step_model(survey) == "qwen/qwen3-coder-30b"
    assert workflow.step_model(risks) == "mistralai/magistral-small-2509"
    assert workflow.step_model(polish) == "openai/gpt-oss-20b"


def test_models_in_use_lists_alias_targets_default_and_step_models(workflow) -> None:
    used = workflow.models_in_use()
    assert {model: position.line for model, position in used.items()} == {
        "qwen/qwen3-coder-30b": 7,
        "mistralai/magistral-small-2509": 8,
        "google/gemma-3-270m": 9,
        "openai/gpt-oss-20b": 38,
    }
    assert used["openai/gpt-oss-20b"].col == 12


def test_load_workflow_raises_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(WORKFLOW.replace("needs: survey", "needs: servey").replace("0.2", "hot"))
    with pytest.raises(WorkflowInvalidError) as raised:
        load_workflow(path)
    assert raised.value.exit_code == 2
    assert sorted(p.rule for p in raised.value.problems) == ["unknown-step", "wrong-type"]


@pytest.mark.parametrize(
    ("text", "line", "col"),
    [
        ("x: " + nested_list(65), 1, 67),  # the mapping is level 1: the 64th `[` is too deep
        ("x:\n" + nested_block_yaml(70), 66, 129),
        (
            "a: &a [[[[[[[[1]]]]]]]]\n"
            + "".join(f"x{i}: &x{i} [*{'a' if i == 0 else f'x{i - 1}'}]\n" for i in range(60)),
            1,
            15,  # inside the anchored value, reached through 60 aliases
        ),
    ],
    ids=["flow", "block", "through-aliases"],
)
def test_nesting_past_the_limit_is_refused_where_it_happens(text: str, line: int, col: int) -> None:
    """One limit, below any recursion limit, with the position of the first level too deep:
    also for aliases, which nest deeper than the text shows."""
    doc = parse_document(text)
    assert doc.data is None
    [problem] = doc.problems
    assert problem.rule == "yaml-too-deep"
    assert problem.message == f"YAML nesting is deeper than {MAX_NESTING} levels"
    assert (problem.line, problem.col) == (line, col)
    assert parse_document("x: " + nested_list(MAX_NESTING - 1)).problems == []


def test_an_alias_inside_its_own_anchor_is_refused_at_the_anchor() -> None:
    [problem] = parse_document("version: 1\n" + ALIAS_LOOP).problems
    assert problem.rule == "yaml-alias-loop"
    assert (problem.line, problem.col) == (2, 4)


def test_startup_timeout_per_server_with_defaults_by_transport(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\n"
        "mcp_servers:\n"
        "  slow: {command: npx, startup_timeout: 90}\n"
        "  quick: {command: uvx}\n"
        "  web: {url: 'http://127.0.0.1:1/mcp'}\n"
        "steps:\n  - {id: a, model: m, prompt: hi, mcp: [slow, quick, web]}\n"
    )
    servers = load_workflow(path).mcp_servers
    timeouts = {name: server.startup_timeout for name, server in servers.items()}
    assert timeouts == {"slow": 90.0, "quick": 30.0, "web": 10.0}

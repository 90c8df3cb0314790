"""`lmflow validate` and `lmflow schema` as CI uses them: formats, exit codes, file discovery."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hostile import nested_ifs, nested_parentheses, plus_chain
from jsonschema import Draft202012Validator

from runner.cli import main
from runner.spec import load_workflow

ROOT = Path(__file__).resolve().parents[1]

VALID = """\
version: 1
defaults:
  model: qwen/qwen3-8b
steps:
  - id: hello
    prompt: Say hello.
"""

NO_MODEL = """\
version: 1
steps:
  - id: haiku
    prompt: Write a haiku about autumn.
"""

TWO_PROBLEMS = """\
version: 1
defaults:
  model: qwen/qwen3-8b
steps:
  - id: summary
  - id: second
    promt: Summarize the project.
"""

ONLY_A_WARNING = """\
version: 1
defaults:
  model: qwen/qwen3-8b
inputs:
  topic: {type: string, required: true, default: cats}
steps:
  - id: essay
    prompt: "Write about {{ inputs.topic }}"
"""

TEXT_LINE = re.compile(
    r"^(?P<path>.+):(?P<line>\d+):(?P<col>\d+): (error|warning): .+ \[[a-z0-9-]+\]$"
)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def validate_json(lmflow_cli, *targets: Path | str) -> tuple[int, dict]:
    outcome = lmflow_cli("validate", "--offline", "--format", "json", *map(str, targets))
    return outcome.exit_code, json.loads(outcome.stdout)


# --- formats -------------------------------------------------------------------------------


def test_text_format_prints_location_message_rule_and_hint(tmp_path, lmflow_cli) -> None:
    path = write(tmp_path, "haiku.yaml", NO_MODEL)
    outcome = lmflow_cli("validate", "--offline", str(path))
    assert outcome.exit_code == 2
    assert outcome.stdout.splitlines() == [
        f"{path}:3:5: error: step 'haiku' talks to a model but none is set [no-model]",
        "    hint: add `model:` to the step, or `defaults: {model: ...}`",
    ]
    assert (
        "1 file(s) checked: 0 without errors, 1 with errors (1 error(s), 0 warning(s))"
        in outcome.stderr
    )


def test_text_format_lists_every_problem_in_file_order(tmp_path, lmflow_cli) -> None:
    path = write(tmp_path, "summary.yaml", TWO_PROBLEMS)
    outcome = lmflow_cli("validate", "--offline", "--format", "text", str(path))
    problem_lines = [line for line in outcome.stdout.splitlines() if not line.startswith(" ")]
    assert all(TEXT_LINE.match(line) for line in problem_lines)
    assert [line.split(": ", 1)[0] for line in problem_lines] == [f"{path}:5:5", f"{path}:7:5"]
    assert problem_lines[0].endswith("[missing-key]")
    assert problem_lines[1].endswith("[unknown-key]")
    assert "    hint: did you mean 'prompt' or 'prompt_from' or 'prompt_file'?" in outcome.stdout


def test_github_format_prints_annotations(tmp_path, lmflow_cli) -> None:
    path = write(tmp_path, "haiku.yaml", NO_MODEL)
    outcome = lmflow_cli("validate", "--offline", "--format", "github", str(path))
    assert outcome.exit_code == 2
    assert outcome.stdout.splitlines() == [
        f"::error file={path},line=3,col=5,title=no-model::step 'haiku' talks to a model "
        "but none is set (hint: add `model:` to the step, or `defaults: {model: ...}`)"
    ]


def test_github_format_escapes_property_values(tmp_path, lmflow_cli) -> None:
    path = write(tmp_path, "a,b.yaml", NO_MODEL)
    outcome = lmflow_cli("validate", "--offline", "--format", "github", str(path))
    assert f"file={str(path).replace(',', '%2C')},line=3," in outcome.stdout


def test_warnings_alone_keep_the_exit_code_zero(tmp_path, lmflow_cli) -> None:
    path = write(tmp_path, "essay.yaml", ONLY_A_WARNING)
    text = lmflow_cli("validate", "--offline", str(path))
    github = lmflow_cli("validate", "--offline", "--format", "github", str(path))
    code, payload = validate_json(lmflow_cli, path)
    assert (text.exit_code, github.exit_code, code) == (0, 0, 0)
    assert f"{path}:5:" in text.stdout and ": warning: " in text.stdout
    assert github.stdout.startswith("::warning file=")
    assert payload["valid"] is True
    assert [p["rule"] for p in payload["files"][0]["problems"]] == ["required-with-default"]


def test_json_format_structure(tmp_path, lmflow_cli) -> None:
    good = write(tmp_path, "good.yaml", VALID)
    bad = write(tmp_path, "bad.yaml", NO_MODEL)
    code, payload = validate_json(lmflow_cli, good, bad)
    assert code == 2
    assert payload == {
        "valid": False,
        "files": [
            {"path": str(good), "valid": True, "problems": []},
            {
                "path": str(bad),
                "valid": False,
                "problems": [
                    {
                        "path": str(bad),
                        "line": 3,
                        "col": 5,
                        "message": "step 'haiku' talks to a model but none is set",
                        "rule": "no-model",
                        "hint": "add `model:` to the step, or `defaults: {model: ...}`",
                        "severity": "error",
                    }
                ],
            },
        ],
    }


# --- exit codes ------------------------------------------------------------------------------


def test_exit_code_zero_for_a_valid_file(tmp_path, lmflow_cli) -> None:
    outcome = lmflow_cli("validate", "--offline", str(write(tmp_path, "ok.yaml", VALID)))
    assert outcome.exit_code == 0
    assert outcome.stdout == ""
    assert "1 without errors, 0 with errors" in outcome.stderr


def test_no_arguments_is_a_usage_error(lmflow_cli) -> None:
    outcome = lmflow_cli("validate", "--offline")
    assert outcome.exit_code == 2
    assert "TARGETS" in outcome.stderr


def test_unknown_format_is_a_usage_error(tmp_path, lmflow_cli) -> None:
    path = write(tmp_path, "ok.yaml", VALID)
    assert lmflow_cli("validate", "--offline", "--format", "xml", str(path)).exit_code == 2


def test_missing_file_is_reported_with_exit_code_two(tmp_path, lmflow_cli) -> None:
    code, payload = validate_json(lmflow_cli, tmp_path / "nope.yaml")
    assert code == 2
    [problem] = payload["files"][0]["problems"]
    assert problem["rule"] == "unreadable"
    assert "No such file" in problem["message"]


def test_directory_without_workflows_is_a_usage_error(tmp_path, lmflow_cli) -> None:
    write(tmp_path, "notes.txt", "not a workflow")
    outcome = lmflow_cli("validate", "--offline", str(tmp_path))
    assert outcome.exit_code == 2
    assert "no workflow files" in outcome.stderr


def test_console_script_exit_codes(tmp_path, capsys) -> None:
    """The real entry point, as CI runs it: the codes reach the shell via SystemExit."""
    for args, expected in (
        (["validate", "--offline", str(write(tmp_path, "ok.yaml", VALID))], 0),
        (["validate", "--offline", str(write(tmp_path, "bad.yaml", NO_MODEL))], 2),
        (["validate"], 2),
    ):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == expected, args
    assert "Missing argument" in capsys.readouterr().err


def test_installed_command_never_prints_a_traceback(tmp_path) -> None:
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"\xff\xfe\x00garbage: [\n")
    done = subprocess.run(
        [sys.executable, "-m", "runner", "validate", "--offline", str(junk)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert "[not-utf8]" in done.stdout


# --- files and directories -------------------------------------------------------------------


def test_directories_are_searched_recursively_skipping_hidden_ones(tmp_path, lmflow_cli) -> None:
    write(tmp_path, "a.yaml", VALID)
    write(tmp_path, "nested/deeper/b.yml", NO_MODEL)
    write(tmp_path, "nested/notes.txt", "ignored")
    write(tmp_path, ".github/workflows/ci.yaml", "not: [a workflow")
    write(tmp_path, "nested/.draft.yaml", "not: [a workflow")
    write(tmp_path, "node_modules/pkg/x.yaml", "not: [a workflow")
    code, payload = validate_json(lmflow_cli, tmp_path)
    assert code == 2
    assert [f["path"] for f in payload["files"]] == [
        str(tmp_path / "a.yaml"),
        str(tmp_path / "nested/deeper/b.yml"),
    ]
    assert [f["valid"] for f in payload["files"]] == [True, False]


def test_cassettes_snapshots_and_excluded_files_are_skipped_and_counted(
    tmp_path, lmflow_cli
) -> None:
    write(tmp_path, "a.yaml", VALID)
    cassette = (ROOT / "tests" / "cassettes" / "changelog.yaml").read_text()
    write(tmp_path, "cassettes/recorded.yaml", cassette)
    # A cassette whose header comment was edited away is still known by its keys.
    write(tmp_path, "cassettes/bare.yaml", "version: 1\nexchanges: []\n")
    write(tmp_path, "tests/__snapshots__/test_x/snap[one].yaml", "- type: run_started\n")
    write(tmp_path, "data/fixture.yaml", "not: [a workflow")
    write(tmp_path, "data/keep/other.yml", "not: [a workflow")
    outcome = lmflow_cli(
        "validate", "--offline", str(tmp_path), "--exclude", "*/data/*", "--exclude", "x.yaml"
    )
    assert outcome.exit_code == 0, outcome.stdout
    assert outcome.stdout == ""
    assert outcome.stderr.strip() == (
        "1 file(s) checked: 1 without errors, 0 with errors (0 error(s), 0 warning(s)); "
        "5 skipped (2 cassette(s), 2 excluded, 1 snapshot(s))"
    )
    code, payload = validate_json(lmflow_cli, tmp_path / "cassettes", tmp_path / "a.yaml")
    assert code == 0
    assert [f["path"] for f in payload["files"]] == [str(tmp_path / "a.yaml")]
    assert payload["skipped"] == [
        {"path": str(tmp_path / "cassettes/bare.yaml"), "reason": "cassette"},
        {"path": str(tmp_path / "cassettes/recorded.yaml"), "reason": "cassette"},
    ]


def test_this_repository_validates_without_reading_its_cassettes_and_snapshots(
    lmflow_cli,
) -> None:
    outcome = lmflow_cli(
        "validate",
        "--offline",
        str(ROOT / "workflows"),
        str(ROOT / "tests" / "cassettes"),
        str(ROOT / "tests" / "__snapshots__"),
        "--exclude",
        "*.json",
    )
    assert outcome.exit_code == 0, outcome.stdout
    assert " 0 with errors " in outcome.stderr and " skipped (" in outcome.stderr


def test_several_files_report_all_their_problems(tmp_path, lmflow_cli) -> None:
    first = write(tmp_path, "one.yaml", TWO_PROBLEMS)
    second = write(tmp_path, "two.yaml", NO_MODEL)
    third = write(tmp_path, "three.yaml", VALID)
    code, payload = validate_json(lmflow_cli, first, second, third)
    assert code == 2
    rules = {f["path"]: sorted(p["rule"] for p in f["problems"]) for f in payload["files"]}
    assert rules == {
        str(first): ["missing-key", "unknown-key"],
        str(second): ["no-model"],
        str(third): [],
    }


def test_a_directory_and_a_file_together(tmp_path, lmflow_cli) -> None:
    write(tmp_path, "dir/a.yaml", VALID)
    single = write(tmp_path, "single.yaml", VALID)
    code, payload = validate_json(lmflow_cli, tmp_path / "dir", single)
    assert code == 0
    assert [f["path"] for f in payload["files"]] == [str(tmp_path / "dir/a.yaml"), str(single)]


# --- lmflow schema ---------------------------------------------------------------------------


def test_schema_command_prints_the_published_schema(lmflow_cli) -> None:
    outcome = lmflow_cli("schema")
    assert outcome.exit_code == 0
    printed = json.loads(outcome.stdout)
    Draft202012Validator.check_schema(printed)
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    published = json.loads((ROOT / "schemas" / "workflow.schema.json").read_text("utf-8"))
    assert printed == published


# --- x- keys ---------------------------------------------------------------------------------

ANNOTATED = """\
version: 1
x-owner: platform-team
x-tags: [nightly, triage]
lmstudio:
  base_url: http://localhost:1234
  x-note: the team's shared box
models:
  coder: qwen/qwen3-coder-30b
  x-comment: pinned after the March evaluation
defaults:
  model: coder
  x-why: one model keeps runs comparable
inputs:
  x-note: inputs documented in the README
  path:
    type: string
    default: "."
    x-example: src/
mcp_servers:
  x-policy: {owner: infra}
  time:
    command: uvx
    args: [mcp-server-time]
    x-docs: https://github.com/modelcontextprotocol/servers
  search:
    url: http://127.0.0.1:8931/mcp
    x-optional: true
steps:
  - id: now
    tool: time.get_current_time
    with: {timezone: UTC}
    x-note: {why: a tool step may carry notes too}
  - id: survey
    mcp: [search]
    prompt: "It is {{ steps.now.output }}. Survey {{ inputs.path }}."
    x-reviewed-by: [alice, bob]
outputs:
  x-consumer: the nightly report
  survey: "{{ steps.survey.output }}"
"""


def test_x_keys_are_accepted_everywhere_they_may_appear(tmp_path, lmflow_cli) -> None:
    code, payload = validate_json(lmflow_cli, write(tmp_path, "annotated.yaml", ANNOTATED))
    assert payload["files"][0]["problems"] == []
    assert code == 0


def test_x_entries_of_named_maps_are_notes_not_names(tmp_path) -> None:
    workflow = load_workflow(write(tmp_path, "annotated.yaml", ANNOTATED))
    assert dict(workflow.models) == {"coder": "qwen/qwen3-coder-30b"}
    assert list(workflow.inputs) == ["path"]
    assert list(workflow.mcp_servers) == ["time", "search"]
    assert list(workflow.outputs) == ["survey"]
    assert list(workflow.models_in_use()) == ["qwen/qwen3-coder-30b"]


@pytest.mark.parametrize(
    ("anchor", "where"),
    [
        ("x-owner: platform-team\n", ""),
        ("  x-note: the team's shared box\n", "  "),
        ("  x-why: one model keeps runs comparable\n", "  "),
        ("    x-example: src/\n", "    "),
        ("    x-optional: true\n", "    "),
        ("    x-reviewed-by: [alice, bob]\n", "    "),
    ],
)
def test_a_misspelled_key_next_to_x_keys_is_still_caught(
    tmp_path, lmflow_cli, anchor: str, where: str
) -> None:
    text = ANNOTATED.replace(anchor, anchor + f"{where}xnote: without the dash\n")
    code, payload = validate_json(lmflow_cli, write(tmp_path, "annotated.yaml", text))
    assert code == 2
    assert [p["rule"] for p in payload["files"][0]["problems"]] == ["unknown-key"]


# --- the model check when the server is down --------------------------------------------------


def test_a_down_server_does_not_hide_the_problems_of_the_files(tmp_path, lmflow_cli) -> None:
    from fakes.lmstudio import down_url

    bad = write(tmp_path, "bad.yaml", NO_MODEL)
    good = write(tmp_path, "good.yaml", VALID)
    outcome = lmflow_cli(
        "validate", "--format", "json", "--base-url", down_url(), str(bad), str(good)
    )
    assert outcome.exit_code == 2
    files = {
        f["path"]: [p["rule"] for p in f["problems"]] for f in json.loads(outcome.stdout)["files"]
    }
    assert files == {str(bad): ["no-model"], str(good): []}


def test_a_down_server_with_valid_files_is_exit_3(tmp_path, lmflow_cli) -> None:
    from fakes.lmstudio import down_url

    good = write(tmp_path, "good.yaml", VALID)
    outcome = lmflow_cli("validate", "--base-url", down_url(), str(good))
    assert outcome.exit_code == 3
    assert "cannot reach LM Studio" in outcome.stderr


def test_a_10_mb_file_is_refused_with_a_message_not_read(tmp_path, lmflow_cli) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"version: 1\n" + b"# padding padding padding\n" * 400_000)
    assert huge.stat().st_size > 10_000_000
    outcome = lmflow_cli("validate", "--offline", "--format", "json", str(huge))
    assert outcome.exit_code == 2
    (problem,) = json.loads(outcome.stdout)["files"][0]["problems"]
    assert problem["rule"] == "file-too-large"


def test_a_misspelled_command_gets_a_suggestion() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runner", "valdate", "x.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "No such command 'valdate'. Did you mean validate?" in done.stderr


# --- hostile files (issue 8): a problem with a position and exit 2, never a traceback --------

DEEP_PROMPT = """\
version: 1
defaults: {{model: qwen/qwen3-8b}}
steps:
  - id: a
    prompt: |
      intro
      {text}
"""
DEEP_CONDITION = """\
version: 1
defaults: {{model: qwen/qwen3-8b}}
steps:
  - id: a
    prompt: hi
    if: "{text}"
"""


@pytest.mark.parametrize(
    ("template", "text", "lines"),
    [
        (DEEP_PROMPT, "{{ " + nested_parentheses(69) + " }}", {7}),
        (DEEP_PROMPT, "{{ " + plus_chain(488) + " }}", {7}),
        # too deep for the parser itself: the field's first line
        (DEEP_PROMPT, nested_ifs(242), {6, 7}),
        (DEEP_CONDITION, nested_parentheses(69), {6}),
        (DEEP_CONDITION, plus_chain(488), {6}),
        (DEEP_CONDITION, "not " * 600 + "true", {6}),
    ],
)
def test_a_template_nested_too_deeply_is_a_problem_with_a_position(
    tmp_path, lmflow_cli, template: str, text: str, lines: set[int]
) -> None:
    path = write(tmp_path, "deep.yaml", template.format(text=text))
    code, payload = validate_json(lmflow_cli, path)
    assert code == 2
    (problem,) = payload["files"][0]["problems"]
    assert problem["rule"] == "template-syntax"
    assert "nest" in problem["message"] and "deep" in problem["message"]
    assert problem["line"] in lines and problem["col"] >= 1
    assert problem["hint"]

"""Prompt files (`prompt_file:`, `system_file:`): read into the step when the workflow is
loaded, checked by the validator at their own path, line and column, and part of the step's
fingerprint like an inline prompt."""

from __future__ import annotations

from pathlib import Path

from fakes.lmstudio import FakeLMStudio
from test_run_cli import lmflow

from runner.spec import check_file

WORKFLOW = """\
version: 1
defaults: {model: qwen/qwen3-coder-30b}
inputs:
  topic: {type: string, default: ants}
agents:
  writer:
    system_file: prompts/writer.md
steps:
  - id: draft
    agent: writer
    prompt_file: prompts/draft.md
"""


def write(tmp_path: Path, writer: str, draft: str | None, workflow: str = WORKFLOW) -> Path:
    """The workflow and its prompt files (no draft file when `draft` is None)."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts/writer.md").write_text(writer)
    if draft is not None:
        (tmp_path / "prompts/draft.md").write_text(draft)
    (tmp_path / "wf.yaml").write_text(workflow)
    return tmp_path / "wf.yaml"


def test_a_run_sends_the_files_rendered_with_the_steps_context(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        writer="You write about {{ inputs.topic }}.\n",
        draft="Line one.\nDraft a note on {{ inputs.topic | upper }}.\n",
    )
    with FakeLMStudio() as lm:
        run = lmflow(tmp_path, "run", path.name, "--base-url", lm.url)
        assert run.code == 0, run.stderr
        (request,) = lm.chat_requests
    assert request["messages"] == [
        {"role": "system", "content": "You write about ants.\n"},  # the text as it is
        {"role": "user", "content": "Line one.\nDraft a note on ANTS.\n"},
    ]


def test_resume_sees_a_changed_prompt_file_as_a_changed_step(tmp_path: Path) -> None:
    path = write(tmp_path, writer="You write.", draft="first draft")
    with FakeLMStudio() as lm:
        assert lmflow(tmp_path, "run", path.name, "--base-url", lm.url).code == 0
        same = lmflow(tmp_path, "run", path.name, "--base-url", lm.url, "--resume", "last")
        assert same.code == 0, same.stderr
        assert len(lm.chat_requests) == 1  # unchanged: reused
        (tmp_path / "prompts/draft.md").write_text("second draft")
        again = lmflow(tmp_path, "run", path.name, "--base-url", lm.url, "--resume", "last")
        assert again.code == 0, again.stderr
        assert [r["messages"][-1]["content"] for r in lm.chat_requests] == [
            "first draft",
            "second draft",
        ]


def test_template_errors_in_a_prompt_file_point_into_that_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        writer="You write.\nAbout {{ inputs.topc }}.\n",
        draft="Intro.\n\n  Draft {{ inputs.topic }\n",
    )
    workflow, problems = check_file(path)
    assert workflow is None
    found = sorted((p.path, p.line, p.col, p.rule) for p in problems)
    assert found == [
        (str(tmp_path / "prompts/draft.md"), 3, 3, "template-syntax"),
        (str(tmp_path / "prompts/writer.md"), 2, 10, "unknown-input"),
    ]


def test_a_missing_prompt_file_is_reported_at_its_key_with_the_resolved_path(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, writer="You write.", draft=None)
    _, problems = check_file(path)
    (problem,) = problems
    assert (problem.path, problem.line, problem.col, problem.rule) == (
        str(path),
        11,
        18,
        "unreadable-prompt-file",
    )
    assert str(tmp_path / "prompts/draft.md") in problem.message


def test_a_prompt_and_a_prompt_file_together_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "You write.", "a draft", WORKFLOW + "    prompt: inline too\n")
    _, problems = check_file(path)
    (problem,) = problems
    assert (problem.line, problem.col, problem.rule) == (11, 18, "text-and-file")
    assert problem.message == "step 'draft' has both `prompt:` and `prompt_file:`"

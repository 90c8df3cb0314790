"""`ask:` steps: the question's types, `--answer`, the terminal (a real pseudo-terminal), the
refusal when nobody can answer, the answer in the run log, cassettes and `--resume`, and
`lmflow batch`'s refusal. (Elicitation under `lmflow serve`: tests/test_serve.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.api import RunOptions, run_workflow
from runner.ask_step import Question
from runner.errors import ConfigurationError
from runner.spec import check_file, load_workflow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "workflows" / "commit-message.yaml"
CASSETTE = ROOT / "tests" / "cassettes" / "commit-message.yaml"

# No model: a run needs no LM Studio, so the question is the only thing it waits for.
DEPLOY = """\
version: 1
name: deploy
inputs:
  target: {type: string, default: staging}
steps:
  - id: go
    ask: "Deploy to {{ inputs.target }}?"
    type: boolean
  - id: level
    ask: How loud?
    type: enum
    choices: [quiet, loud]
    default: quiet
  - id: shout
    if: steps.go.output
    run: [echo, "deploying ({{ steps.level.output }})"]
outputs:
  go: "{{ steps.go.output }}"
  level: "{{ steps.level.output }}"
  said: "{{ steps.shout.output.stdout | trim if steps.shout.status == 'succeeded' else '' }}"
"""


def write(tmp_path: Path, text: str = DEPLOY, name: str = "deploy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def options(tmp_path: Path, **given: Any) -> RunOptions:
    return RunOptions(runs_dir=tmp_path / "runs", **given)


def events(result: Any) -> list[dict[str, Any]]:
    lines = (result.run_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


class Scripted:
    """An asker of the library: answers from a list, and counts the questions."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked: list[Question] = []

    async def __call__(self, question: Question) -> Any:
        self.asked.append(question)
        return self.answers.pop(0)


# --- the question ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        ("boolean", "yes", True),
        ("boolean", " N ", False),
        ("boolean", "true", True),
        ("enum", "loud", "loud"),
        ("string", "  keep spaces ", "  keep spaces "),
    ],
)
def test_an_answer_is_parsed_by_the_type(kind: Any, text: str, value: Any) -> None:
    question = Question("q", "?", kind, ("quiet", "loud") if kind == "enum" else ())
    assert question.parse(text) == value


def test_a_wrong_answer_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="not true or false"):
        Question("q", "?", "boolean").parse("maybe")
    with pytest.raises(ValueError, match="one of quiet, loud"):
        Question("q", "?", "enum", ("quiet", "loud")).check("LOUD")
    with pytest.raises(ValueError, match="not true or false"):
        Question("q", "?", "boolean").check(3)


def test_the_elicitation_schema_follows_the_type() -> None:
    assert Question("q", "?", "boolean", default=False, has_default=True).json_schema() == {
        "title": "q",
        "type": "boolean",
        "default": False,
    }
    assert Question("q", "?", "enum", ("a", "b")).json_schema()["enum"] == ["a", "b"]


# --- validate --------------------------------------------------------------------------------


def test_validate_checks_type_choices_and_default_with_their_place(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
version: 1
steps:
  - id: a
    ask: Go?
    type: boolean
    default: "yes"
  - id: b
    ask: Which?
    type: enum
  - id: c
    ask: Which?
    type: enum
    choices: [major, minor]
    default: minr
  - id: d
    ask: Name?
    choices: [x]
""",
    )
    _, problems = check_file(path)
    found = {(p.rule, p.line, p.col) for p in problems}
    assert found == {
        ("ask-default", 6, 14),
        ("ask-choices", 9, 11),
        ("ask-default", 14, 14),
        ("ask-choices", 17, 14),
    }
    hints = {p.line: p.hint for p in problems}
    assert hints[14] == "did you mean 'minor'?"


def test_a_question_reads_steps_and_waits_for_them(tmp_path: Path) -> None:
    workflow = load_workflow(write(tmp_path))
    assert workflow.plan.dependencies()["shout"] == {"go", "level"}
    assert load_workflow(EXAMPLE).plan.dependencies()["approve"] == {"draft"}


# --- answers in a run ------------------------------------------------------------------------


def test_given_answers_are_the_outputs_and_are_logged(tmp_path: Path) -> None:
    given = {"go": "yes", "level": "loud"}
    result = asyncio.run(run_workflow(write(tmp_path), {}, options(tmp_path, answers=given)))
    assert result.status == "succeeded", result.error
    assert result.outputs == {"go": True, "level": "loud", "said": "deploying (loud)"}
    answered = [e for e in events(result) if e["type"] == "ask_answered"]
    assert [(e["step"], e["answer"], e["by"]) for e in answered] == [
        ("go", True, "answer"),
        ("level", "loud", "answer"),
    ]
    assert answered[0]["question"] == "Deploy to staging?"


def test_the_asker_is_asked_and_the_default_is_its_choice_too(tmp_path: Path) -> None:
    asker = Scripted(False, "quiet")
    result = asyncio.run(run_workflow(write(tmp_path), {}, options(tmp_path, asker=asker)))
    assert [q.step for q in asker.asked] == ["go", "level"]
    assert asker.asked[0].text == "Deploy to staging?"
    assert result.steps["shout"].status == "skipped"
    assert result.outputs["go"] is False


def test_an_answer_the_type_does_not_take_fails_the_step(tmp_path: Path) -> None:
    result = asyncio.run(
        run_workflow(write(tmp_path), {}, options(tmp_path, asker=Scripted("perhaps", "quiet")))
    )
    assert result.steps["go"].status == "failed"
    assert "'perhaps' is not true or false" in (result.steps["go"].error or "")


def test_without_anyone_to_ask_the_default_answers(tmp_path: Path) -> None:
    result = asyncio.run(run_workflow(write(tmp_path), {}, options(tmp_path, answers={"go": True})))
    assert result.outputs["level"] == "quiet"
    (level,) = [e for e in events(result) if e["type"] == "ask_answered" and e["step"] == "level"]
    assert level["by"] == "default"


def test_nobody_to_answer_refuses_the_run_before_it_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as refused:
        asyncio.run(run_workflow(write(tmp_path), {}, options(tmp_path)))
    assert refused.value.exit_code == 2
    assert "step 'go' asks a question" in refused.value.message
    assert refused.value.hint is not None
    assert "pass --answer go=VALUE or run it in a terminal" in refused.value.hint
    assert not (tmp_path / "runs").exists()  # nothing ran, no log


# --- the command line ------------------------------------------------------------------------


def test_run_takes_answers_and_checks_them(lmflow_cli: Any, tmp_path: Path) -> None:
    path = str(write(tmp_path))
    runs = str(tmp_path / "runs")
    done = lmflow_cli("run", path, "--answer", "go=y", "--answer", "level=loud", "--json", "-q")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["outputs"]["said"] == "deploying (loud)"
    wrong = lmflow_cli("run", path, "--answer", "go=maybe", "--no-log")
    assert wrong.exit_code == 2
    assert "--answer go=maybe: 'maybe' is not true or false (yes/no)" in wrong.stderr
    unknown = lmflow_cli("run", path, "--answer", "og=yes", "--no-log")
    assert unknown.exit_code == 2
    assert "the workflow has no ask step 'og'" in unknown.stderr
    assert not Path(runs).exists()


def test_run_without_a_terminal_or_answer_is_exit_2_with_the_fix(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(write(tmp_path))],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "step 'go' asks a question and nobody can answer" in done.stderr
    assert "hint: pass --answer go=VALUE or run it in a terminal" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_dry_run_shows_the_question_and_asks_nothing(lmflow_cli: Any, tmp_path: Path) -> None:
    done = lmflow_cli("run", str(write(tmp_path)), "--dry-run")
    assert done.exit_code == 0
    assert "▶ go  ask (boolean)\n    question:\n      Deploy to staging?\n" in done.stdout
    assert "▶ level  ask (enum: quiet, loud)" in done.stdout


def test_did_you_mean_for_an_unknown_ask_step(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as refused:
        asyncio.run(run_workflow(write(tmp_path), {}, options(tmp_path, answers={"lvel": "x"})))
    assert refused.value.hint == "did you mean 'level'?"


def _read_until(fd: int, wanted: str, seen: bytearray, within: float = 60.0) -> str:
    """The terminal's output until `wanted` shows (a bound against a hang, not a timing)."""
    deadline = time.monotonic() + within
    while wanted.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen.decode(errors="replace")


def test_run_asks_on_a_terminal_until_the_answer_fits(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(write(tmp_path)), "--json"],
        cwd=tmp_path,
        stdin=follower,
        stderr=follower,
        stdout=subprocess.PIPE,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "100"},
    )
    os.close(follower)
    seen = bytearray()
    try:
        screen = _read_until(leader, "answer (y/n): ", seen)
        assert "Deploy to staging?" in screen
        # The live view redraws 8 times a second; while the question waits it draws nothing.
        asked_at = len(seen)
        _read_until(leader, "\x1b[2K", seen, within=1.0)
        assert seen[asked_at:] == b""
        os.write(leader, b"maybe\n")
        screen = _read_until(leader, "is not true or false", seen)
        os.write(leader, b"yes\n")
        screen = _read_until(leader, "answer (quiet/loud) [quiet]: ", seen)
        os.write(leader, b"\n")  # Enter: the default
        assert process.stdout is not None
        stdout = process.stdout.read()
        assert process.wait(timeout=60) == 0, _read_until(leader, "never", seen, 1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(leader)
    assert json.loads(stdout)["outputs"] == {
        "go": True,
        "level": "quiet",
        "said": "deploying (quiet)",
    }


def test_ctrl_c_at_the_question_ends_the_run_as_interrupted(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    log = tmp_path / "events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(write(tmp_path)), "--log", str(log)],
        cwd=tmp_path,
        stdin=follower,
        stderr=follower,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "TERM": "xterm"},
    )
    os.close(follower)
    try:
        _read_until(leader, "answer (y/n): ", bytearray())
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130  # not left reading the terminal
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(leader)
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["type"], last["status"]) == ("run_finished", "interrupted")


def test_each_item_of_a_for_each_question_is_asked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
version: 1
steps:
  - id: keep
    for_each: [a.txt, b.txt]
    ask: "Keep {{ item }}?"
    type: boolean
outputs:
  kept: "{{ steps.keep.output }}"
""",
    )
    asker = Scripted(True, False)
    result = asyncio.run(run_workflow(path, {}, options(tmp_path, asker=asker)))
    assert sorted((q.item, q.text) for q in asker.asked) == [(0, "Keep a.txt?"), (1, "Keep b.txt?")]
    assert len(result.outputs["kept"]) == 2 and sorted(result.outputs["kept"]) == [False, True]


# --- cassettes and --resume ------------------------------------------------------------------


def test_the_example_replays_its_answer_without_asking(tmp_path: Path) -> None:
    async def refuse(question: Question) -> Any:
        raise AssertionError("a replay asked")

    replay = options(tmp_path, replay=CASSETTE, asker=refuse)
    result = asyncio.run(run_workflow(EXAMPLE, {}, replay))
    assert result.status == "succeeded", result.error
    assert result.steps["approve"].output is True
    assert result.outputs["committed"] is True
    (answered,) = [e for e in events(result) if e["type"] == "ask_answered"]
    assert answered["by"] == "cassette"


def test_the_example_replays_in_ci_with_answer(lmflow_cli: Any, tmp_path: Path) -> None:
    common = ("run", str(EXAMPLE), "--replay", str(CASSETTE), "--no-log", "--json", "-q")
    yes = lmflow_cli(*common, "--answer", "approve=yes")
    assert yes.exit_code == 0, yes.stderr
    assert json.loads(yes.stdout)["outputs"]["committed"] is True
    no = lmflow_cli(*common, "--answer", "approve=no")
    assert no.exit_code == 0, no.stderr
    outputs = json.loads(no.stdout)["outputs"]
    assert (outputs["committed"], outputs["result"]) == (False, "not committed")


def test_resume_reuses_an_answer_only_to_the_same_question(tmp_path: Path) -> None:
    path = write(tmp_path)
    first = asyncio.run(run_workflow(path, {}, options(tmp_path, asker=Scripted(True, "loud"))))
    assert first.status == "succeeded"
    again = Scripted()
    resumed = asyncio.run(
        run_workflow(path, {}, options(tmp_path, asker=again, resume=first.run_id))
    )
    assert again.asked == []  # both answers reused
    assert resumed.steps["go"].output is True and resumed.outputs["level"] == "loud"
    changed = Scripted(False)
    other = asyncio.run(
        run_workflow(
            path, {"target": "production"}, options(tmp_path, asker=changed, resume=first.run_id)
        )
    )
    assert [q.text for q in changed.asked] == ["Deploy to production?"]
    assert other.steps["go"].output is False and other.outputs["level"] == "loud"


def test_resume_needs_no_one_to_ask_for_answers_it_reuses(tmp_path: Path) -> None:
    path = write(tmp_path)
    given = options(tmp_path, answers={"go": "yes"})
    first = asyncio.run(run_workflow(path, {}, given))
    resumed = asyncio.run(run_workflow(path, {}, options(tmp_path, resume=first.run_id)))
    assert resumed.status == "succeeded", resumed.error
    assert resumed.steps["go"].reused_from == first.run_id
    elsewhere = asyncio.run(
        run_workflow(path, {"target": "prod"}, options(tmp_path, resume=first.run_id))
    )
    assert elsewhere.steps["go"].status == "failed"  # a new question, nobody to ask it
    assert elsewhere.steps["go"].hint is not None
    assert "--answer go=VALUE" in elsewhere.steps["go"].hint


def test_a_recorded_answer_goes_into_the_cassette(tmp_path: Path, fake_lmstudio: Any) -> None:
    path = write(
        tmp_path,
        DEPLOY.replace(
            "  - id: shout\n",
            "  - id: note\n    model: qwen/qwen3-coder-30b\n"
            "    prompt: 'go={{ steps.go.output }}'\n"
            "  - id: shout\n",
        ),
    )
    cassette = tmp_path / "cassette.yaml"
    recording = options(
        tmp_path, record=cassette, base_url=fake_lmstudio.url, asker=Scripted(True, "loud")
    )
    recorded = asyncio.run(run_workflow(path, {}, recording))
    assert recorded.status == "succeeded", recorded.error
    assert yaml.safe_load(cassette.read_text())["answers"] == [
        {"step": "go", "question": "Deploy to staging?", "answer": True},
        {"step": "level", "question": "How loud?", "answer": "loud"},
    ]
    replayed = asyncio.run(run_workflow(path, {}, options(tmp_path, replay=cassette)))
    assert replayed.outputs == recorded.outputs


# --- batch -----------------------------------------------------------------------------------


def test_batch_refuses_questions_without_a_default_before_any_row(
    lmflow_cli: Any, tmp_path: Path
) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"target": "a"}\n{"target": "b"}\n')
    out = tmp_path / "out.jsonl"
    refused = lmflow_cli("batch", str(write(tmp_path)), str(rows), "-o", str(out))
    assert refused.exit_code == 2
    assert "step 'go' asks a question without a default" in refused.stderr
    assert not out.exists()


def test_batch_answers_with_the_defaults(lmflow_cli: Any, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"target": "a"}\n{"target": "b"}\n')
    out = tmp_path / "out.jsonl"
    with_default = DEPLOY.replace("    type: boolean\n", "    type: boolean\n    default: true\n")
    done = lmflow_cli("batch", str(write(tmp_path, with_default)), str(rows), "-o", str(out), "-q")
    assert done.exit_code == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["outputs"]["said"] for line in lines] == ["deploying (quiet)"] * 2

"""`lmflow run --resume`: what succeeded is reused only while nothing it depends on changed.

Each run is a real `lmflow` process against the loopback fake LM Studio; what the fake
receives proves which steps ran again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakes.lmstudio import FakeLMStudio, Refusal
from test_run_cli import Run, lmflow, workflow

from runner.resume import step_fingerprint
from runner.spec import load_workflow

CHAIN = """
inputs:
  topic: {type: string, default: ants}
steps:
  - {id: a, prompt: "about {{ inputs.topic }}"}
  - {id: b, prompt: "more on {{ steps.a.output }}"}
  - {id: c, prompt: independent}
outputs:
  b: "{{ steps.b.output }}"
"""


def runs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / ".lmflow" / "runs").iterdir())


def finished(run: Run, run_dir: Path) -> dict[str, dict[str, Any]]:
    events = run.events(run_dir / "events.jsonl")
    return {e["step"]: e for e in events if e["type"] == "step_finished"}


def prompts(lm: FakeLMStudio) -> list[str]:
    return sorted(r["messages"][-1]["content"] for r in lm.chat_requests)


def test_a_resumed_run_sends_no_request_for_the_steps_that_succeeded(tmp_path: Path) -> None:
    file = workflow(tmp_path, CHAIN)
    # a and c start together and may reach the fake in either order: answer by prompt
    first_answers = {"about ants": "A", "independent": "C", "more on A": Refusal(400, "no")}
    script = [lambda body: first_answers[body["messages"][-1]["content"]]] * 3
    with FakeLMStudio(script=script) as first:
        failed = lmflow(tmp_path, "run", file, "--base-url", first.url, "-i", "topic=ants")
    assert failed.code != 0
    (first_dir,) = runs(tmp_path)
    assert finished(failed, first_dir)["b"]["status"] == "failed"
    answers = {"more on A": "B"}
    with FakeLMStudio(script=[lambda body: answers[body["messages"][-1]["content"]]]) as second:
        resumed = lmflow(
            tmp_path, "run", file, "--base-url", second.url, "-i", "topic=ants", "--resume", "last"
        )
        assert resumed.code == 0, resumed.stderr
        assert prompts(second) == ["more on A"]  # a and c came from the first run
    second_dir = next(p for p in runs(tmp_path) if p != first_dir)
    steps = finished(resumed, second_dir)
    assert steps["a"]["reused_from"] == first_dir.name
    assert steps["c"]["reused_from"] == first_dir.name
    assert "reused_from" not in steps["b"]
    assert resumed.stdout.strip() == "B"
    assert f"↺ a reused from run {first_dir.name}" in resumed.stderr


def test_a_changed_input_reruns_what_reads_it_and_what_follows(tmp_path: Path) -> None:
    file = workflow(tmp_path, CHAIN)
    with FakeLMStudio() as lm:  # echoes
        done = lmflow(tmp_path, "run", file, "--base-url", lm.url, "-i", "topic=ants")
        assert done.code == 0, done.stderr
        (first_dir,) = runs(tmp_path)
        again = lmflow(
            tmp_path, "run", file, "--base-url", lm.url, "-i", "topic=bees", "--resume", "last"
        )
        assert again.code == 0, again.stderr
        rerun = sorted(r["messages"][-1]["content"] for r in lm.chat_requests[3:])
        assert rerun == ["about bees", "more on echo: about bees"]  # c was not asked again
    later = next(p for p in runs(tmp_path) if p != first_dir)
    steps = finished(again, later)
    assert "reused_from" not in steps["a"] and "reused_from" not in steps["b"]
    assert "reused_from" in steps["c"]
    assert again.stdout.strip() == "echo: more on echo: about bees"


FOR_EACH = """
steps:
  - id: each
    for_each: [one, two, three]
    concurrency: 1
    prompt: "{{ item }}"
outputs:
  all: "{{ steps.each.output }}"
"""


def test_resume_reuses_the_items_that_succeeded(tmp_path: Path) -> None:
    file = workflow(tmp_path, FOR_EACH)
    with FakeLMStudio(script=["1", "2"]) as first:  # the third item fails
        failed = lmflow(tmp_path, "run", file, "--base-url", first.url)
    assert failed.code != 0
    with FakeLMStudio(script=["3"]) as second:
        resumed = lmflow(tmp_path, "run", file, "--base-url", second.url, "--resume", "last")
        assert resumed.code == 0, resumed.stderr
        assert prompts(second) == ["three"]
    assert resumed.stdout.strip() == '["1", "2", "3"]'


def test_only_what_changes_an_answer_changes_the_fingerprint(tmp_path: Path) -> None:
    base = """\
version: 1
defaults: {model: qwen/qwen3-8b%s}
inputs:
  topic: {type: string}
  other: {type: string}
steps:
  - {id: first, prompt: warm up}
  - {id: a%s, prompt: "about {{ inputs.topic }} after {{ steps.first.output }}"}
"""

    def fingerprint(defaults: str = "", step: str = "", **inputs: str) -> str:
        path = tmp_path / "wf.yaml"
        path.write_text(base % (defaults, step))
        workflow = load_workflow(path)
        context = {
            "inputs": {"topic": "ants", "other": "x", **inputs},
            "steps": {"first": {"output": "ok", "status": "succeeded"}},
        }
        return step_fingerprint(workflow, workflow.steps[1], context)

    same = fingerprint()
    assert fingerprint(", concurrency: 1, timeout: 900, fail_fast: true") == same
    assert fingerprint(step=", timeout: 5, continue_on_error: true, name: A") == same
    assert fingerprint(other="changed") == same  # an input the step does not read
    assert fingerprint(topic="bees") != same
    assert fingerprint(", temperature: 0.9") != same
    assert fingerprint(step=", model: qwen/qwen3-4b") != same

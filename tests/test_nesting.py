"""Loops and sub-workflows composed: a loop whose body runs a `workflow:` step, and a
sub-workflow that holds a loop, run against the loopback fake LM Studio (answering by
prompt); their steps' scoped ids (`LOOP[N]/STEP/INNER`, `STEP/LOOP[N]/INNER`) in the events,
the run order of the snapshot view, `step_at` across both, and validation inside both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakes.lmstudio import FakeLMStudio, FakeModel
from test_replay import run
from test_run_cli import MODEL
from test_subworkflows import CHILD, problems, write

from runner import load_workflow
from runner.runlog import snapshot_view
from runner.spec.model import step_at


def head(name: str) -> str:
    return f"version: 1\nname: {name}\ndefaults: {{model: {MODEL}}}\n"


LOOP_OF_WORKFLOWS = (
    head("drafts")
    + """\
steps:
  - id: fix
    loop:
      max: 3
      until: "loop.index >= 2"
      steps:
        - id: sum
          workflow: parts/summarize.yaml
          with: {subject: "draft {{ loop.index }}", words: 2}
        - id: judge
          prompt: "Judge {{ steps.sum.output.summary }}"
outputs:
  last: "{{ steps.fix.output.judge }}"
"""
)

LOOPING_CHILD = (
    head("polish")
    + """\
steps:
  - id: again
    loop:
      max: 2
      until: false
      on_max: succeed
      steps:
        - id: work
          prompt: "Polish {{ loop.index }}"
outputs:
  polished: "{{ steps.again.output.work }}"
"""
)

WORKFLOW_OF_LOOPS = (
    head("suite")
    + """\
steps:
  - id: first
    workflow: parts/polish.yaml
  - id: report
    prompt: "Report {{ steps.first.output.polished }}"
"""
)


def echo(body: dict[str, Any]) -> str:
    return f"<{body['messages'][-1]['content']}>"


def fake() -> FakeLMStudio:
    return FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], script=[echo] * 20)


def ids(events: list[dict[str, Any]], kind: str) -> list[str]:
    return [e["step"] for e in events if e["type"] == kind]


def test_a_loop_runs_a_sub_workflow_in_each_iteration(tmp_path: Path) -> None:
    path = write(tmp_path, {"wf.yaml": LOOP_OF_WORKFLOWS, "parts/summarize.yaml": CHILD})
    with fake() as lm:
        status, events, result = run(path, base_url=lm.url)
        asked = [r["messages"][-1]["content"] for r in lm.chat_requests]
    assert status == "succeeded"
    assert asked == [
        "Write about draft 1",
        "Shorten to 2 words: <Write about draft 1>",
        "Judge <Shorten to 2 words: <Write about draft 1>>",
        "Write about draft 2",
        "Shorten to 2 words: <Write about draft 2>",
        "Judge <Shorten to 2 words: <Write about draft 2>>",
    ]
    assert result.outputs == {"last": "<Judge <Shorten to 2 words: <Write about draft 2>>>"}
    assert ids(snapshot_view(events), "step_started") == [
        "fix",
        "fix[1]/sum",
        "fix[1]/sum/write",
        "fix[1]/sum/shorten",
        "fix[1]/judge",
        "fix[2]/sum",
        "fix[2]/sum/write",
        "fix[2]/sum/shorten",
        "fix[2]/judge",
    ]
    started = {e["step"]: e for e in events if e["type"] == "step_started"}
    assert started["fix"]["steps"] == ["sum", "judge"]
    assert started["fix[2]/sum"]["steps"] == ["write", "shorten"]
    assert started["fix[2]/sum"]["workflow"] == "parts/summarize.yaml"
    requests = [e["step"] for e in events if e["type"] == "llm_request"]
    assert requests[:3] == ["fix[1]/sum/write", "fix[1]/sum/shorten", "fix[1]/judge"]


def test_a_sub_workflow_runs_its_loop_under_the_step(tmp_path: Path) -> None:
    path = write(tmp_path, {"suite.yaml": WORKFLOW_OF_LOOPS, "parts/polish.yaml": LOOPING_CHILD})
    with fake() as lm:
        status, events, result = run(path, base_url=lm.url)
    assert status == "succeeded"
    assert ids(snapshot_view(events), "step_finished") == [
        "first/again[1]/work",
        "first/again[2]/work",
        "first/again",
        "first",
        "report",
    ]
    iterations = [e for e in events if e["type"] == "iteration_finished"]
    assert [(e["step"], e["iteration"]) for e in iterations] == [
        ("first/again", 1),
        ("first/again", 2),
    ]
    assert result.steps[-1].output == "<Report <Polish 2>>"


def test_step_at_goes_through_loops_and_included_files(tmp_path: Path) -> None:
    path = write(tmp_path, {"wf.yaml": LOOP_OF_WORKFLOWS, "parts/summarize.yaml": CHILD})
    flow = load_workflow(path)
    found = step_at(flow, "fix[2]/sum/write")
    assert found is not None
    owner, step = found
    assert step.id == "write" and owner.name == "summarize"  # its own file's settings
    assert step_at(flow, "fix[2]/sum/judge") is None


def test_a_workflow_step_in_a_loop_is_validated_where_it_is_written(tmp_path: Path) -> None:
    parent = LOOP_OF_WORKFLOWS.replace("with: {subject:", "with: {subjct:")
    path = write(tmp_path, {"wf.yaml": parent, "parts/summarize.yaml": CHILD})
    assert problems(path) == [
        "wf.yaml:12:11 missing-input step 'sum' in loop 'fix' does not give input 'subject', "
        "which summarize.yaml requires",
        "wf.yaml:12:18 unknown-input step 'sum' in loop 'fix' gives input 'subjct', which "
        "summarize.yaml does not declare",
    ]


def test_a_loop_in_a_sub_workflow_is_validated_in_its_file(tmp_path: Path) -> None:
    child = LOOPING_CHILD.replace("Polish {{ loop.index }}", "Polish {{ loop.indx }}")
    path = write(tmp_path, {"suite.yaml": WORKFLOW_OF_LOOPS, "parts/polish.yaml": child})
    assert problems(path) == [
        "polish.yaml:12:30 unknown-reference step 'work' in loop 'again' key 'prompt' reads "
        "loop.indx, which does not exist"
    ]


def test_resume_reuses_a_loops_sub_workflow_steps_one_by_one(tmp_path: Path) -> None:
    path = write(tmp_path, {"wf.yaml": LOOP_OF_WORKFLOWS, "parts/summarize.yaml": CHILD})
    with fake() as lm:
        first, _, _ = run(path, base_url=lm.url)
    assert first == "succeeded"
    (tmp_path / "parts/summarize.yaml").write_text(CHILD.replace("Shorten to", "Cut to"))
    with fake() as lm:
        status, events, _ = run(path, base_url=lm.url, resume="last")
        asked = [r["messages"][-1]["content"] for r in lm.chat_requests]
    assert status == "succeeded"
    # an edited included file changes the loop step too; its unchanged steps are reused
    reused = {e["step"] for e in events if e["type"] == "step_finished" and e.get("reused_from")}
    assert reused == {"fix[1]/sum/write", "fix[2]/sum/write"}
    assert [text.split(":")[0] for text in asked] == ["Cut to 2 words", "Judge <Cut to 2 words"] * 2


def test_an_answer_by_id_reaches_an_ask_step_inside_a_loop(tmp_path: Path) -> None:
    from runner.ask_step import parse_answers, unanswered

    path = write(
        tmp_path,
        {
            "wf.yaml": head("asks")
            + "steps:\n"
            + "  - id: fix\n"
            + "    loop:\n"
            + "      max: 2\n"
            + "      until: steps.ok.output\n"
            + "      steps: [{id: ok, ask: Good?, type: boolean}]\n"
        },
    )
    flow = load_workflow(path)
    assert [step.id for step in unanswered(flow)] == ["ok"]  # a batch must refuse it
    assert parse_answers(flow, {"ok": "yes"}) == {"ok": True}

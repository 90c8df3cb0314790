"""Bounded `loop:` steps: the plan, the checks, and real runs against the loopback fake LM
Studio, whose model answers by prompt (never by arrival order); record/replay, --resume and
Ctrl-C across the iterations."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import FakeLMStudio, FakeModel
from test_replay import run as run_in_process
from test_run_cli import MODEL, Make, interrupt_when, lmflow, spawn, workflow
from test_run_cli import tag as tag  # the fixture

from runner import load_workflow
from runner.runlog import RunOrder, snapshot_view
from runner.spec import check_file
from runner.spec.model import step_at

REVIEW_SCHEMA = (
    "{type: object, properties: {approved: {type: boolean}, note: {type: string}}, "
    "required: [approved, note]}"
)


def worker_reviewer(on_max: str = "", gate: str = "true", review: str = "review") -> str:
    """A worker, a command and a reviewer that approves in iteration `passes_at`."""
    return f"""\
version: 1
name: loop-test
defaults: {{model: {MODEL}}}
inputs:
  passes_at: {{type: integer, default: 2}}
steps:
  - id: plan
    prompt: "plan the fix"
  - id: fix
    loop:
      max: 3
      until: steps.review.output.approved{on_max}
      steps:
        - id: work
          prompt: "work {{{{ loop.index }}}}: {{{{ steps.plan.output }}}}\
{{% if loop.previous %}} / {{{{ loop.previous.review.output.note }}}}{{% endif %}}"
        - id: test
          run: [sh, -c, "{gate} && echo tested {{{{ loop.index }}}}"]
        - id: review
          prompt: "{review} {{{{ loop.index }}}} of {{{{ inputs.passes_at }}}}: \
{{{{ steps.test.output.stdout | trim }}}}"
          output_schema: {REVIEW_SCHEMA}
  - id: report
    prompt: "report after {{{{ steps.fix.output.iterations }}}}: {{{{ steps.fix.output.work }}}}"
outputs:
  iterations: "{{{{ steps.fix.output.iterations }}}}"
  approved: "{{{{ steps.fix.output.review.approved }}}}"
"""


def answer(body: dict[str, Any]) -> str:
    """The fake model's answer to a request, decided by its prompt alone."""
    text = body["messages"][-1]["content"]
    words = text.split()
    if words[0] in ("review", "judge"):
        index, passes_at = int(words[1]), int(words[3].rstrip(":"))
        return json.dumps({"approved": index >= passes_at, "note": f"note {index}"})
    return f"ok: {text}"


def fake() -> FakeLMStudio:
    return FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], script=[answer] * 40)


def prompts(lm: FakeLMStudio) -> list[str]:
    return [r["messages"][-1]["content"] for r in lm.chat_requests]


def run(path: Path, **options: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Run in-process; (result, events as dicts)."""
    _, events, result = run_in_process(path, **options)
    return result, events


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def ended(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["step"]: e for e in of_type(events, "step_finished")}


# --- the plan and the checks ----------------------------------------------------------------


def test_a_loop_step_waits_for_the_outer_steps_its_nested_steps_read(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(worker_reviewer().replace("plan the fix", "plan {{ env.LOOP_SECRET }}"))
    flow = load_workflow(path)
    plan = flow.plan
    assert plan.dependencies() == {
        "plan": frozenset(),
        "fix": frozenset({"plan"}),
        "report": frozenset({"fix"}),
    }
    body = plan.steps[1].body
    assert body is not None
    assert body.dependencies() == {
        "work": frozenset(),
        "test": frozenset(),
        "review": frozenset({"test"}),
    }
    assert [f.text for f in body.output_fields] == ["steps.review.output.approved"]
    assert flow.bodies["fix"].plan.order() == ["work", "test", "review"]
    assert "LOOP_SECRET" in plan.env_names
    inner = worker_reviewer().replace("work {{ loop.index }}", "work {{ env.INNER_SECRET }}")
    path.write_text(inner)
    assert "INNER_SECRET" in load_workflow(path).plan.env_names


BROKEN = """\
version: 1
name: broken
defaults: {model: qwen/qwen3}
steps:
  - id: first
    prompt: "{{ loop.index }} {{ steps.work.output }}"
  - id: fix
    loop:
      max: 2
      until: "steps.review.output.ok and ("
      steps:
        - id: work
          prompt: "{{ loop.previous.reviw.output }} {{ loop.idx }} {{ steps.later.output }}"
        - id: review
          prompt: "{{ item }}"
        - id: review
          prompt: "again"
        - id: first
          prompt: "clash"
  - id: later
    prompt: "{{ steps.fix.output.wrk }} {{ steps.fix.output.iterations }}"
  - id: capless
    for_each: [1]
    loop:
      until: "true"
      steps: [{id: q, prompt: "{{ loop.index }}"}]
"""


def test_the_checks_of_loop_steps_say_where_and_how_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    found = {(p.line, p.rule): (p.message, p.hint) for p in check_file(path)[1]}
    assert found[(6, "item-outside-for-each")][0].endswith(
        "reads 'loop', which exists only in a `for_each:` step or inside a `loop:`"
    )
    assert found[(6, "unknown-step")] == (
        "step 'first' key 'prompt' reads unknown step 'work', which is inside loop 'fix'",
        "outside the loop, read steps.fix.output.work (its last iteration)",
    )
    assert (
        "condition in step 'fix' key 'loop.until' does not parse"
        in (found[(10, "template-syntax")][0])
    )
    assert found[(13, "unknown-step")] == (
        "step 'work' in loop 'fix' key 'prompt' reads loop.previous.reviw, but the loop has "
        "no step 'reviw'",
        "did you mean 'review'?",
    )
    assert found[(13, "unknown-reference")][1] == "did you mean 'index'?"
    assert found[(13, "forward-reference")][0] == (
        "step 'work' in loop 'fix' reads steps.later, which comes after loop 'fix'"
    )
    assert found[(15, "item-outside-for-each")][0].startswith("step 'review' in loop 'fix'")
    assert found[(16, "duplicate-step-id")][0] == "step id 'review' is used twice"
    assert found[(18, "duplicate-step-id")][0] == (
        "step id 'first' inside loop 'fix' is also a step outside it"
    )
    assert found[(21, "unknown-output-field")] == (
        "step 'later' key 'prompt' reads steps.fix.output.wrk, but loop 'fix' has no step 'wrk'",
        "did you mean 'work'?",
    )
    assert "a loop step runs once" in (found[(23, "unknown-key")][1] or "")
    assert found[(24, "missing-key")][1] == (
        "a loop needs `max:`, the most iterations it may run (1 to 100), e.g. max: 3"
    )


def one_problem(tmp_path: Path, most: int, inner_id: str) -> Any:
    """The one problem of a loop of one command step (max on line 6, the step on line 8)."""
    path = tmp_path / "wf.yaml"
    path.write_text(
        f"version: 1\nname: t\nsteps:\n  - id: l\n    loop:\n      max: {most}\n"
        f"      until: 'true'\n      steps: [{{id: {inner_id}, run: [echo]}}]\n"
    )
    (problem,) = check_file(path)[1]
    return problem


def test_a_nested_step_cannot_be_called_iterations(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, 2, "iterations")
    assert (problem.line, problem.col, problem.rule) == (8, 20, "reserved-step-id")


def test_max_is_capped(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, 1000, "a")
    assert (problem.line, problem.rule) == (6, "bad-value")
    assert "at most 100" in problem.message


def test_the_run_order_puts_nested_steps_under_their_loop() -> None:
    order = RunOrder()
    order.see("run_started", None, {"steps": ["a", "fix", "z"]})
    order.see("step_started", "fix", {"steps": ["work", "inner"]})
    order.see("step_started", "fix[2]/inner", {"steps": ["x"]})
    ids = ["z", "fix[2]/inner[1]/x", "fix[10]/work", "fix[2]/work", "fix", "fix[1]/inner", "a"]
    assert sorted(ids, key=order.key) == [
        "a",
        "fix",
        "fix[1]/inner",
        "fix[2]/work",
        "fix[2]/inner[1]/x",
        "fix[10]/work",
        "z",
    ]


# --- runs -----------------------------------------------------------------------------------


def test_a_loop_runs_until_its_condition_and_gives_its_last_iteration(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(worker_reviewer())
    with fake() as lm:
        done = lmflow(tmp_path, "run", "wf.yaml", "--base-url", lm.url, "--json")
        sent = prompts(lm)
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["outputs"] == {"iterations": 2, "approved": True}
    # the previous iteration's review reaches the next worker; the first has none
    assert "work 1: ok: plan the fix" in sent
    assert "work 2: ok: plan the fix / note 1" in sent
    assert "report after 2: ok: work 2: ok: plan the fix / note 1" in sent
    events = done.events()
    nested = [f"fix[{n}]/{s}" for n in (1, 2) for s in ("work", "test", "review")]
    started = [e["step"] for e in of_type(events, "step_started")]
    assert sorted(started) == sorted(["plan", "fix", *nested, "report"])
    assert [(e["iteration"], e["until"]) for e in of_type(events, "iteration_finished")] == [
        (1, False),
        (2, True),
    ]
    loop = ended(events)["fix"]
    assert loop["status"] == "succeeded"
    assert loop["output"]["iterations"] == 2
    assert loop["output"]["review"] == {"approved": True, "note": "note 2"}
    assert loop["output"]["test"]["stdout"] == "tested 2\n"
    assert loop["rounds"] == 4  # two model steps, two iterations
    # the snapshot view: the loop's iterations in order, between its start and its end
    view = [(e["type"], e.get("step")) for e in snapshot_view(events)]
    steps = [s for kind, s in view if kind in ("step_started", "step_finished")]
    pairs = [s for s in nested for _ in "se"]
    assert steps == ["plan", "plan", "fix", *pairs, "fix", "report", "report"]
    # the summary names nested steps right after their loop step
    table = done.stderr.split("step ")[-1].splitlines()
    rows = [line.split()[0] for line in table[1:] if line.strip()]
    assert rows[:3] == ["plan", "fix", "fix[1]/work"]
    assert rows[-1] == "report"
    assert "fix iteration 1: until is false" in done.stderr
    # the HTML report takes the scoped ids too
    report = lmflow(tmp_path, "report", "last", "-o", "report.html")
    assert report.code == 0, report.stderr
    page = (tmp_path / "report.html").read_text()
    assert "note 2" in page
    shown = [page.index(f">{step}<") for step in ("fix", "fix[1]/work", "fix[2]/review", "report")]
    assert shown == sorted(shown)  # nested steps right after their loop step


@pytest.mark.parametrize(
    ("on_max", "status"), [("", "failed"), ("\n      on_max: succeed", "succeeded")]
)
def test_reaching_max_fails_the_step_unless_on_max_succeed(
    tmp_path: Path, on_max: str, status: str
) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(worker_reviewer(on_max=on_max))
    with fake() as lm:
        result, events = run(path, base_url=lm.url, inputs={"passes_at": 5})
    loop = ended(events)["fix"]
    assert loop["status"] == status
    assert loop["output"]["iterations"] == 3
    assert [e["until"] for e in of_type(events, "iteration_finished")] == [False, False, False]
    if status == "failed":
        assert result.status == "failed"
        assert loop["error"] == "reached max: 3 iterations and until: is still false"
        assert "on_max: succeed" in loop["hint"]
        assert ended(events)["report"]["status"] == "skipped"
    else:
        assert result.outputs == {"iterations": 3, "approved": False}


def test_a_failed_nested_step_fails_its_iteration_and_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(worker_reviewer(gate="test {{ loop.index }} -lt 2"))
    with fake() as lm:
        result, events = run(path, base_url=lm.url, inputs={"passes_at": 3})
    steps = ended(events)
    assert steps["fix[2]/test"]["status"] == "failed"
    assert steps["fix[2]/review"]["status"] == "skipped"
    assert steps["fix"]["status"] == "failed"
    assert steps["fix"]["error"].startswith("iteration 2: step 'test' failed: command sh exited")
    assert [e["status"] for e in of_type(events, "iteration_finished")] == [
        "succeeded",
        "failed",
    ]
    assert "fix[3]/work" not in steps
    assert result.status == "failed"
    assert result.error.startswith("step 'fix' failed: iteration 2: step 'test' failed")


def test_continue_on_error_on_a_nested_step_keeps_the_loop_going(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    text = (
        worker_reviewer(gate="test {{ loop.index }} -lt 2")
        .replace("        - id: test\n", "        - id: test\n          continue_on_error: true\n")
        .replace("        - id: review\n", "        - id: review\n          if: true\n")
        .replace("{{ steps.test.output.stdout | trim }}", "{{ steps.test.status }}")
    )
    path.write_text(text)
    with fake() as lm:
        result, events = run(path, base_url=lm.url, inputs={"passes_at": 3})
        sent = prompts(lm)
    assert result.status == "succeeded"
    assert ended(events)["fix[2]/test"]["status"] == "failed"
    assert "review 2 of 3: failed" in sent
    assert result.outputs == {"iterations": 3, "approved": True}


def test_nested_loops_scope_their_ids_and_count_their_own_iterations(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            version: 1
            name: nested
            steps:
              - id: outer
                loop:
                  max: 3
                  until: loop.index == 2
                  steps:
                    - id: inner
                      loop:
                        max: 5
                        until: steps.count.output.stdout | trim == "3"
                        steps:
                          - id: count
                            run: [echo, "{{ loop.index }}"]
                    - id: after
                      run: [echo, "inner ran {{ steps.inner.output.iterations }}"]
            outputs:
              said: "{{ steps.outer.output.after.stdout | trim }}"
              outer: "{{ steps.outer.output.iterations }}"
            """
        )
    )
    result, events = run(path)
    assert result.status == "succeeded", result.error
    assert result.outputs == {"said": "inner ran 3", "outer": 2}
    started = {e["step"] for e in of_type(events, "step_started")}
    assert "outer[2]/inner[3]/count" in started
    assert "outer[1]/after" in started
    assert "outer[2]/inner[4]/count" not in started


# --- record/replay, resume, Ctrl-C ------------------------------------------------------------


def test_a_recorded_loop_replays_to_the_same_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(worker_reviewer())
    cassette = tmp_path / "loop.cassette.yaml"
    with fake() as lm:
        recorded, recorded_events = run(path, base_url=lm.url, record=cassette)
    assert recorded.status == "succeeded"
    steps = [e.get("step") for e in _cassette_exchanges(cassette)]
    assert steps == [
        "plan",
        "fix[1]/work",
        "fix[1]/review",
        "fix[2]/work",
        "fix[2]/review",
        "report",
    ]
    replayed, replayed_events = run(path, replay=cassette)
    assert replayed.status == "succeeded"
    assert replayed.outputs == recorded.outputs
    assert snapshot_view(replayed_events) == snapshot_view(recorded_events)


def _cassette_exchanges(path: Path) -> list[dict[str, Any]]:
    import yaml

    return list(yaml.safe_load(path.read_text())["exchanges"])


def test_resume_reuses_the_iterations_that_succeeded_and_reruns_a_changed_step(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wf.yaml"
    gate = tmp_path / "gate"
    path.write_text(worker_reviewer(gate=f"test {{{{ loop.index }}}} -lt 2 || test -e {gate}"))
    with fake() as lm:
        first, _ = run(path, base_url=lm.url)
    assert first.status == "failed"  # iteration 2's test: no gate yet
    gate.touch()
    with fake() as lm:
        resumed, events = run(path, base_url=lm.url, resume="last")
        sent = prompts(lm)
    assert resumed.status == "succeeded", resumed.error
    # the plan, iteration 1 and iteration 2's worker come from the first run; iteration 2's
    # test failed there, so it and the review that waits for it run now
    assert sent == [
        "review 2 of 2: tested 2",
        "report after 2: ok: work 2: ok: plan the fix / note 1",
    ]
    reused = {e["step"] for e in of_type(events, "step_finished") if e.get("reused_from")}
    assert reused == {"plan", "fix[1]/work", "fix[1]/test", "fix[1]/review", "fix[2]/work"}
    # a changed nested step is a changed step: the reviewer's prompt differs now
    path.write_text(
        worker_reviewer(gate=f"test {{{{ loop.index }}}} -lt 2 || test -e {gate}", review="judge")
    )
    with fake() as lm:
        again, events = run(path, base_url=lm.url, resume="last")
        sent = prompts(lm)
    assert again.status == "succeeded", again.error
    assert "judge 1 of 2: tested 1" in sent
    assert not any(text.startswith("work 1") for text in sent)


def test_ctrl_c_during_an_iteration_ends_the_step_and_its_loop_interrupted(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio()
    marker = tmp_path / "started"
    body = f"""
        steps:
          - id: fix
            loop:
              max: 3
              until: "false"
              steps:
                - id: slow
                  run: [sh, -c, "test {{{{ loop.index }}}} = 1 || {{ touch {marker}; sleep 60; }}"]
        """
    process = spawn(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, tag=tag)
    interrupt_when(process, marker.exists, "the second iteration")
    assert process.returncode == 130
    (run_dir,) = (tmp_path / ".lmflow" / "runs").iterdir()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    steps = ended(events)
    assert steps["fix[1]/slow"]["status"] == "succeeded"
    assert steps["fix[2]/slow"]["status"] == "interrupted"
    assert steps["fix"]["status"] == "interrupted"
    assert [e["iteration"] for e in of_type(events, "iteration_finished")] == [1]
    assert of_type(events, "run_finished")[0]["status"] == "interrupted"


def test_a_dry_run_shows_the_first_iteration_of_a_loop(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(worker_reviewer())
    done = lmflow(tmp_path, "run", "wf.yaml", "--dry-run")
    assert done.code == 0, done.stderr
    assert "▶ fix  loop  (max: 3, until: steps.review.output.approved)" in done.stdout
    assert "work 1: <steps.plan.output>" in done.stdout
    assert "▶ fix[1]/review  model" in done.stdout


def test_models_and_tools_of_nested_steps_are_checked_before_the_run(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(
        textwrap.dedent(
            """\
            version: 1
            name: nested-model
            steps:
              - id: fix
                loop:
                  max: 2
                  until: "true"
                  steps:
                    - id: work
                      model: qwen/qwen3-coder-30c
                      prompt: hello
            """
        )
    )
    with fake() as lm:
        done = lmflow(tmp_path, "run", "wf.yaml", "--base-url", lm.url)
        assert lm.chat_requests == []
    assert done.code == 3, done.stderr
    assert "qwen/qwen3-coder-30c" in done.stderr
    assert "wf.yaml:10:" in done.stderr  # where the nested step names it


def test_step_at_finds_a_nested_step_by_its_scoped_id(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(worker_reviewer())
    flow = load_workflow(path)
    found = step_at(flow, "fix[2]/review")
    assert found is not None
    body, step = found
    assert step.id == "review" and step.kind == "agent"
    assert body is flow.bodies["fix"]  # the iteration's steps, with the file's settings
    assert step_at(flow, "fix") == (flow, flow.steps[1])
    assert step_at(flow, "review") is None


def test_the_trace_nests_an_iterations_steps_under_the_loop_step(tmp_path: Path) -> None:
    from fakes.otlp import OtlpReceiver

    (tmp_path / "wf.yaml").write_text(
        "version: 1\nname: traced\nsteps:\n  - id: fix\n    loop:\n      max: 2\n"
        "      until: loop.index == 2\n      steps: [{id: count, run: [echo, hi]}]\n"
    )
    with OtlpReceiver() as otlp:
        done = lmflow(tmp_path, "run", "wf.yaml", env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url})
    assert done.code == 0, done.stderr
    by_name = {span["name"]: span for span in otlp.spans}
    loop = by_name["step fix"]
    assert by_name["step fix[1]/count"]["parent_id"] == loop["span_id"]
    assert by_name["step fix[2]/count"]["parent_id"] == loop["span_id"]


def test_a_loop_timeout_covers_all_its_iterations(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\nname: slow\nsteps:\n  - id: fix\n    timeout: 1\n    loop:\n"
        "      max: 5\n      until: 'false'\n"
        "      steps: [{id: wait, run: [sh, -c, 'test {{ loop.index }} = 1 || sleep 30']}]\n"
    )
    result, events = run(path)
    steps = ended(events)
    assert steps["fix[1]/wait"]["status"] == "succeeded"
    assert steps["fix[2]/wait"]["status"] == "interrupted"
    assert steps["fix"]["status"] == "failed"
    assert steps["fix"]["error"] == "loop did not finish within 1 s"
    assert result.status == "failed"


def test_the_live_view_shows_a_loop_and_its_running_nested_step() -> None:
    import io

    from rich.console import Console

    from runner.commands._live import LiveView
    from runner.runlog import RunLog

    view = LiveView(console=Console(file=io.StringIO(), force_terminal=True, width=120))
    log = RunLog("run-1")
    log.subscribe(view)
    try:
        log.emit("run_started", steps=["fix"])
        log.emit("step_started", "fix", name=None, model=None, kind="loop", steps=["work"])
        log.emit("step_started", "fix[1]/work", name="Work", model="m-one", kind="agent")
        log.emit("step_finished", "fix[1]/work", status="succeeded", usage={})
        log.emit("iteration_finished", "fix", iteration=1, status="succeeded", until=False)
        log.emit("step_started", "fix[2]/work", name="Work", model="m-one", kind="agent")
        log.emit("llm_request", "fix[2]/work", round=1)
        screen = Console(file=io.StringIO(), width=120, color_system=None)
        screen.print(view.__rich__())
    finally:
        view.close()
    drawn = screen.file.getvalue()  # type: ignore[attr-defined]
    assert "fix[2]/work" in drawn and "round 1" in drawn
    assert "fix[1]/work" not in drawn  # finished: no longer running


def test_a_nested_steps_prompt_file_is_checked_in_its_own_file(tmp_path: Path) -> None:
    (tmp_path / "work.md").write_text("Improve it.\n{{ loop.previous.revew.output }}\n")
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\nname: t\ndefaults: {model: qwen/qwen3}\nsteps:\n  - id: fix\n    loop:\n"
        "      max: 2\n      until: 'true'\n      steps:\n"
        "        - {id: work, prompt_file: work.md}\n        - {id: review, prompt: ok}\n"
        "        - {id: gone, prompt_file: missing.md}\n"
    )
    problems = {p.rule: p for p in check_file(path)[1]}
    typo = problems["unknown-step"]
    assert (typo.path, typo.line, typo.col) == (str(tmp_path / "work.md"), 2, 4)
    assert typo.hint == "did you mean 'review'?"
    missing = problems["unreadable-prompt-file"]
    assert (missing.path, missing.line, missing.col) == (str(path), 12, 35)
    assert str(tmp_path / "missing.md") in missing.message


def test_the_trace_nests_a_sub_workflows_steps_under_its_step_inside_a_loop(
    tmp_path: Path,
) -> None:
    """`fix[2]/lint/check` is a step of sub-workflow step `fix[2]/lint`, not of the loop."""
    from fakes.otlp import OtlpReceiver

    (tmp_path / "lint.yaml").write_text(
        "version: 1\nname: lint\nsteps: [{id: check, run: [echo, ok]}]\n"
    )
    (tmp_path / "wf.yaml").write_text(
        "version: 1\nname: traced\nsteps:\n  - id: fix\n    loop:\n      max: 2\n"
        "      until: loop.index == 2\n      steps: [{id: lint, workflow: lint.yaml}]\n"
    )
    with OtlpReceiver() as otlp:
        done = lmflow(tmp_path, "run", "wf.yaml", env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url})
    assert done.code == 0, done.stderr
    by_name = {span["name"]: span for span in otlp.spans}
    assert by_name["step fix[2]/lint"]["parent_id"] == by_name["step fix"]["span_id"]
    assert by_name["step fix[2]/lint/check"]["parent_id"] == by_name["step fix[2]/lint"]["span_id"]

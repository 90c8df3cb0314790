"""Sub-workflow steps (`workflow: PATH` with `with:`): validated recursively with the child's
problems in its own file, run nested under the step (`PARENT/INNER`), their servers and
models part of the run, and replay, resume and failures across the boundary."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Any

from fakes.lmstudio import FakeLMStudio
from mcp_support import counted_fixture_entry
from rich.console import Console
from test_run_cli import MODEL, Make, assert_clean, lmflow
from test_run_cli import tag as tag  # the fixture

from runner.commands._live import LiveView
from runner.commands._tracker import RunTracker
from runner.runlog import Event, snapshot_view
from runner.spec import check_file

CHILD = f"""\
version: 1
name: summarize
defaults: {{model: {MODEL}}}
inputs:
  subject: {{type: string}}
  words: {{type: integer, default: 5}}
steps:
  - id: write
    prompt: "Write about {{{{ inputs.subject }}}}"
  - id: shorten
    prompt: "Shorten to {{{{ inputs.words }}}} words: {{{{ steps.write.output }}}}"
outputs:
  summary: "{{{{ steps.shorten.output }}}}"
"""

PARENT = f"""\
version: 1
name: suite
defaults: {{model: {MODEL}}}
inputs:
  topic: {{type: string, default: ants}}
steps:
  - id: first
    workflow: parts/summarize.yaml
    with: {{subject: "{{{{ inputs.topic }}}}", words: 3}}
  - id: report
    prompt: "Report: {{{{ steps.first.output.summary }}}}"
outputs:
  report: "{{{{ steps.report.output }}}}"
"""


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    """The files (relative path -> text); returns the first one's path."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path / next(iter(files))


def problems(path: Path) -> list[str]:
    workflow, found = check_file(path)
    assert workflow is None
    return [f"{Path(p.path).name}:{p.line}:{p.col} {p.rule} {p.message}" for p in found]


# --- validation -------------------------------------------------------------------------


def test_a_valid_suite_builds_the_child_into_the_step(tmp_path: Path) -> None:
    path = write(tmp_path, {"suite.yaml": PARENT, "parts/summarize.yaml": CHILD})
    workflow, found = check_file(path)
    assert found == []
    assert workflow is not None
    step = workflow.steps[0]
    assert step.kind == "workflow"
    assert [s.id for s in step.child.steps] == ["write", "shorten"]  # type: ignore[union-attr]
    assert workflow.plan.dependencies()["report"] == frozenset({"first"})


def test_problems_inside_the_child_carry_the_childs_path_line_and_column(
    tmp_path: Path,
) -> None:
    child = CHILD.replace("{{ inputs.subject }}", "{{ inputs.subjct }}")
    path = write(tmp_path, {"suite.yaml": PARENT, "parts/summarize.yaml": child})
    (found,) = problems(path)
    assert found.startswith("summarize.yaml:9:29 unknown-input")
    assert "undeclared input 'subjct'" in found


def test_with_is_checked_against_the_childs_typed_inputs(tmp_path: Path) -> None:
    parent = PARENT.replace(
        'with: {subject: "{{ inputs.topic }}", words: 3}',
        "with:\n      subjec: x\n      words: three",
    )
    path = write(tmp_path, {"suite.yaml": parent, "parts/summarize.yaml": CHILD})
    assert problems(path) == [
        "suite.yaml:9:5 missing-input step 'first' does not give input 'subject', which "
        "summarize.yaml requires",
        "suite.yaml:10:7 unknown-input step 'first' gives input 'subjec', which "
        "summarize.yaml does not declare",
        "suite.yaml:11:14 bad-input-type input 'words' of summarize.yaml: 'three' is not of "
        "type 'integer'",
    ]
    _, found = check_file(path)
    hints = {p.rule: p.hint for p in found}
    assert hints["unknown-input"] == "did you mean 'subject'?"


def test_a_missing_child_is_reported_at_the_workflow_line(tmp_path: Path) -> None:
    path = write(tmp_path, {"suite.yaml": PARENT})
    (found,) = problems(path)
    assert found.startswith("suite.yaml:8:15 unreadable-workflow step 'first' runs ")
    assert found.endswith(
        "parts/summarize.yaml, which cannot be read: cannot read file: No such file or directory"
    )


def test_a_workflow_that_includes_itself_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {"self.yaml": "version: 1\nsteps:\n  - {id: me, workflow: self.yaml}\n"})
    assert problems(path) == [
        "self.yaml:3:24 workflow-cycle step 'me' includes a workflow that includes it: "
        "self.yaml -> self.yaml"
    ]


def test_a_cycle_through_another_file_is_refused_with_the_chain(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "a.yaml": "version: 1\nsteps:\n  - {id: to_b, workflow: sub/b.yaml}\n",
            "sub/b.yaml": "version: 1\nsteps:\n  - {id: to_a, workflow: ../a.yaml}\n",
        },
    )
    assert problems(path) == [
        "b.yaml:3:26 workflow-cycle step 'to_a' includes a workflow that includes it: "
        "a.yaml -> b.yaml -> a.yaml"
    ]


def test_an_output_the_child_does_not_declare_is_an_unknown_field(tmp_path: Path) -> None:
    parent = PARENT.replace("output.summary", "output.sumary")
    path = write(tmp_path, {"suite.yaml": parent, "parts/summarize.yaml": CHILD})
    (found,) = problems(path)
    assert found.startswith("suite.yaml:11:25 unknown-output-field")
    _, all_found = check_file(path)
    assert all_found[0].hint == "did you mean 'summary'?"


def test_a_server_both_files_declare_differently_is_refused(tmp_path: Path) -> None:
    parent = PARENT.replace("steps:\n", "mcp_servers:\n  fx: {command: one}\nsteps:\n", 1)
    child = CHILD.replace("steps:\n", "mcp_servers:\n  fx: {command: two}\nsteps:\n", 1)
    path = write(tmp_path, {"suite.yaml": parent, "parts/summarize.yaml": child})
    (found,) = problems(path)
    assert found.startswith(
        "suite.yaml:10:15 conflicting-server summarize.yaml declares MCP server 'fx' differently"
    )


def test_a_step_key_a_workflow_step_does_not_take_is_explained(tmp_path: Path) -> None:
    parent = PARENT.replace("    workflow: parts/", "    model: x\n    workflow: parts/")
    path = write(tmp_path, {"suite.yaml": parent, "parts/summarize.yaml": CHILD})
    _, found = check_file(path)
    (problem,) = found
    assert (problem.line, problem.rule) == (8, "unknown-key")
    assert problem.hint is not None and "a `workflow:` step runs another workflow" in problem.hint


# --- running ------------------------------------------------------------------------------


def answer_by_prompt(body: dict[str, Any]) -> str:
    """The fake's answer to a request, decided by what it asks, not by when it came."""
    prompt = body["messages"][-1]["content"]
    if prompt.startswith("Write about"):
        return f"long text on {prompt.removeprefix('Write about ')}"
    if prompt.startswith("Shorten"):
        return "short: " + prompt.split(": ", 1)[1]
    return f"final {prompt}"


def by_prompt(turns: int) -> list[Any]:
    return [answer_by_prompt] * turns


def test_a_run_nests_the_childs_events_under_the_step(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    path = write(tmp_path, {"suite.yaml": PARENT, "parts/summarize.yaml": CHILD})
    lm = make_fake_lmstudio(script=by_prompt(3))
    run = lmflow(tmp_path, "run", path.name, "--base-url", lm.url)
    assert run.code == 0, run.stderr
    assert run.result()["outputs"] == {"report": "final Report: short: long text on ants"}
    assert [r["messages"][-1]["content"] for r in lm.chat_requests] == [
        "Write about ants",
        "Shorten to 3 words: long text on ants",
        "Report: short: long text on ants",
    ]
    steps = [(e["type"], e.get("step")) for e in run.events() if "step" in e]
    assert [s for s in steps if s[0] in ("step_started", "step_finished")] == [
        ("step_started", "first"),
        ("step_started", "first/write"),
        ("step_finished", "first/write"),
        ("step_started", "first/shorten"),
        ("step_finished", "first/shorten"),
        ("step_finished", "first"),
        ("step_started", "report"),
        ("step_finished", "report"),
    ]
    first = next(e for e in run.events() if e["type"] == "step_started")
    assert (first["kind"], first["workflow"], first["steps"]) == (
        "workflow",
        "parts/summarize.yaml",
        ["write", "shorten"],
    )
    finished = next(e for e in run.events() if e == {**e, "type": "step_finished", "step": "first"})
    assert finished["output"] == {"summary": "short: long text on ants"}
    assert finished["rounds"] == 2
    assert [s["id"] for s in run.result()["steps"]] == ["first", "report"]
    # the summary table lists the child's steps right under their parent
    assert [line.split()[0] for line in run.stderr.splitlines()[-4:]] == [
        "first",
        "first/write",
        "first/shorten",
        "report",
    ]
    page = lmflow(tmp_path, "report", "last", "-o", "report.html")
    assert page.code == 0, page.stderr
    html = (tmp_path / "report.html").read_text()
    assert 'id="step-first/shorten" data-step="first/shorten" style="margin-left: 1.5em"' in html


def test_a_failing_child_step_fails_the_step_with_its_reason(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    child = CHILD.replace(
        "  - id: shorten\n",
        "  - id: check\n    run: [sh, -c, 'echo broken >&2; exit 4']\n"
        "  - id: shorten\n    needs: check\n",
    )
    path = write(tmp_path, {"suite.yaml": PARENT, "parts/summarize.yaml": child})
    lm = make_fake_lmstudio(script=by_prompt(3))
    run = lmflow(tmp_path, "run", path.name, "--base-url", lm.url)
    assert run.code == 1, run.stderr
    assert_clean(run)
    first, report = run.result()["steps"]
    assert first["status"] == "failed"
    assert first["error"] == "step 'check' failed: command sh exited with 4: broken"
    assert report["status"] == "skipped"
    assert "✗ first failed: step 'check' failed: command sh exited with 4: broken" in run.stderr


def test_replay_answers_the_childs_steps_from_the_cassette(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    path = write(tmp_path, {"suite.yaml": PARENT, "parts/summarize.yaml": CHILD})
    lm = make_fake_lmstudio(script=by_prompt(3))
    recorded = lmflow(tmp_path, "run", path.name, "--base-url", lm.url, "--record", "c.yaml")
    assert recorded.code == 0, recorded.stderr
    cassette = (tmp_path / "c.yaml").read_text()
    assert "step: first/write" in cassette and "step: first/shorten" in cassette
    lm.stop()  # no LM Studio at all now
    replayed = lmflow(tmp_path, "run", path.name, "--replay", "c.yaml", "--log", "replay.jsonl")
    assert replayed.code == 0, replayed.stderr
    first_log = sorted((tmp_path / ".lmflow" / "runs").iterdir())[0] / "events.jsonl"
    live = [json.loads(line) for line in first_log.read_text().splitlines()]
    again = replayed.events(tmp_path / "replay.jsonl")
    assert snapshot_view(again) == snapshot_view(live)


def test_resume_reruns_a_changed_child_and_reuses_its_unchanged_steps(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, {"suite.yaml": PARENT, "parts/summarize.yaml": CHILD})
    with FakeLMStudio() as lm:  # answers echo the prompt
        assert lmflow(tmp_path, "run", path.name, "--base-url", lm.url).code == 0
        same = lmflow(tmp_path, "run", path.name, "--base-url", lm.url, "--resume", "last")
        assert same.code == 0, same.stderr
        assert len(lm.chat_requests) == 3  # nothing changed: all reused
        child = tmp_path / "parts/summarize.yaml"
        child.write_text(CHILD.replace("Shorten to", "Cut to"))
        again = lmflow(tmp_path, "run", path.name, "--base-url", lm.url, "--resume", "last")
        assert again.code == 0, again.stderr
        asked = [r["messages"][-1]["content"] for r in lm.chat_requests[3:]]
    # `write` is unchanged and reused; `shorten` changed, and `report` reads it
    assert asked == [
        "Cut to 3 words: echo: Write about ants",
        "Report: echo: Cut to 3 words: echo: Write about ants",
    ]


def test_the_childs_servers_start_with_the_run_and_identical_ones_are_shared(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    starts = tmp_path / "starts.txt"
    shared = counted_fixture_entry(tag, starts)
    own = counted_fixture_entry(tag, starts, "--name", "own")
    parent = (
        f"version: 1\ndefaults: {{model: {MODEL}}}\nmcp_servers:\n  fx: {json.dumps(shared)}\n"
        "steps:\n  - {id: direct, tool: fx.echo, with: {text: parent}}\n"
        "  - {id: inner, workflow: child.yaml, with: {text: child}}\n"
    )
    child = (
        f"version: 1\ndefaults: {{model: {MODEL}}}\ninputs:\n  text: {{type: string}}\n"
        f"mcp_servers:\n  fx: {json.dumps(shared)}\n  own: {json.dumps(own)}\n"
        "steps:\n  - {id: echo, tool: fx.echo, with: {text: '{{ inputs.text }}'}}\n"
        "  - {id: ask, mcp: [own], prompt: 'use own'}\n"
        "outputs:\n  echoed: '{{ steps.echo.output }}'\n  asked: '{{ steps.ask.output }}'\n"
    )
    path = write(tmp_path, {"suite.yaml": parent, "child.yaml": child})
    lm = make_fake_lmstudio(script=[[("echo", {"text": "x"})], "done"])
    run = lmflow(tmp_path, "run", path.name, "--base-url", lm.url, tag=tag)
    assert run.code == 0, run.stderr
    inner = run.result()["steps"][1]["output"]
    assert "child" in json.dumps(inner["echoed"]) and inner["asked"] == "done"
    (result,) = [e for e in run.events() if e["type"] == "tool_result" and e["step"] == "inner/ask"]
    assert (result["name"], result["is_error"], result["content"]) == ("echo", False, "x")
    assert len(starts.read_text().splitlines()) == 2  # fx once (shared), own once
    assert_clean(run)


def refused_run(tmp_path: Path, parent: str, child: str) -> str:
    """Run suite.yaml including child.yaml, which must be refused (exit 2) before any step,
    without a traceback; its stderr."""
    path = write(tmp_path, {"suite.yaml": parent, "child.yaml": child})
    run = lmflow(tmp_path, "run", path.name)
    assert run.code == 2, run.stderr
    assert_clean(run)
    assert not (run.run_dir / "events.jsonl").read_text().count('"step_started"')
    return run.stderr


def test_a_shared_name_that_renders_differently_exits_2(tmp_path: Path) -> None:
    server = 'fx: {command: "srv-{{ inputs.text }}"}'
    parent = (
        "version: 1\ninputs:\n  text: {type: string, default: a}\n"
        f"mcp_servers:\n  {server}\n"
        "steps:\n  - {id: direct, tool: fx.echo, with: {text: x}}\n"
        "  - {id: inner, workflow: child.yaml, with: {text: b}}\n"
    )
    child = (
        f"version: 1\ninputs:\n  text: {{type: string}}\nmcp_servers:\n  {server}\n"
        "steps:\n  - {id: echo, tool: fx.echo, with: {text: y}}\n"
    )
    stderr = refused_run(tmp_path, parent, child)
    assert "MCP server 'fx' is declared by suite.yaml and by" in stderr
    assert "child.yaml with settings that differ once rendered" in stderr


def test_a_model_only_the_child_uses_goes_through_the_model_check(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    child = CHILD.replace(f"defaults: {{model: {MODEL}}}", "defaults: {model: acme/absent-7b}")
    path = write(tmp_path, {"suite.yaml": PARENT, "parts/summarize.yaml": child})
    lm = make_fake_lmstudio()
    run = lmflow(tmp_path, "run", path.name, "--base-url", lm.url)
    assert run.code == 3, run.stderr
    assert "summarize.yaml:3:" in run.stderr and "acme/absent-7b" in run.stderr
    assert lm.chat_requests == []


def test_a_secret_the_child_reads_is_masked(tmp_path: Path, make_fake_lmstudio: Make) -> None:
    child = CHILD.replace("Write about {{ inputs.subject }}", "Write about {{ env.CHILD_KEY }}")
    path = write(tmp_path, {"suite.yaml": PARENT, "parts/summarize.yaml": child})
    lm = make_fake_lmstudio(script=by_prompt(3))
    run = lmflow(
        tmp_path, "run", path.name, "--base-url", lm.url, env={"CHILD_KEY": "s3cr3t-value"}
    )
    assert run.code == 0, run.stderr
    assert lm.chat_requests[0]["messages"][-1]["content"] == "Write about s3cr3t-value"
    assert "s3cr3t-value" not in (run.run_dir / "events.jsonl").read_text()


# --- views --------------------------------------------------------------------------------


def event(seq: int, type: str, step: str | None = None, **data: Any) -> Event:
    return Event(type, seq, 0.0, "r", step, data)


NESTED_RUN = [
    event(1, "run_started", steps=["sub", "last"]),
    event(2, "step_started", "sub", kind="workflow", steps=["a", "b"]),
    event(3, "step_started", "sub/b"),  # b started first: concurrent steps
    event(4, "step_started", "sub/a"),
    event(5, "step_finished", "sub/a", status="succeeded"),
    event(6, "step_finished", "sub/b", status="succeeded"),
    event(7, "step_finished", "sub", status="succeeded"),
    event(8, "step_started", "last"),
    event(9, "step_finished", "last", status="succeeded"),
    event(10, "run_finished", status="succeeded"),
]


def test_the_snapshot_view_puts_nested_steps_inside_their_parent_in_run_order() -> None:
    viewed = snapshot_view([e.as_dict() for e in NESTED_RUN])
    assert [(e["type"], e.get("step")) for e in viewed] == [
        ("run_started", None),
        ("step_started", "sub"),
        ("step_started", "sub/a"),
        ("step_finished", "sub/a"),
        ("step_started", "sub/b"),
        ("step_finished", "sub/b"),
        ("step_finished", "sub"),
        ("step_started", "last"),
        ("step_finished", "last"),
        ("run_finished", None),
    ]


def test_the_live_view_shows_a_parent_and_its_running_steps_at_once() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    view = LiveView(console=console)
    try:
        for e in NESTED_RUN[:4]:  # sub, sub/b and sub/a under way
            view(e)
        screen = Console(file=io.StringIO(), width=120, color_system=None)
        screen.print(view.__rich__())
        for e in NESTED_RUN[4:]:
            view(e)
    finally:
        view.close()
    running = [line.split()[1] for line in screen.file.getvalue().splitlines()]  # type: ignore[attr-defined]
    assert running == ["sub", "sub/b", "sub/a"]
    table = console.file.getvalue().splitlines()[-4:]  # type: ignore[attr-defined]
    assert [line.split()[0] for line in table] == ["sub", "sub/a", "sub/b", "last"]


def test_the_summary_lists_nested_steps_under_their_parent() -> None:
    tracker = RunTracker()
    for e in NESTED_RUN:
        tracker(e)
    assert [row[0] for row in tracker.summary()] == ["sub", "sub/a", "sub/b", "last"]


def test_the_steps_timeout_bounds_the_whole_sub_workflow(tmp_path: Path) -> None:
    child = "version: 1\nsteps:\n  - {id: slow, run: [sleep, '30']}\n"
    parent = "version: 1\nsteps:\n  - {id: sub, workflow: child.yaml, timeout: 0.5}\n"
    path = write(tmp_path, {"suite.yaml": parent, "child.yaml": child})
    run = lmflow(tmp_path, "run", path.name)
    assert run.code == 1, run.stderr
    assert_clean(run)
    (sub,) = run.result()["steps"]
    assert sub["error"] == "workflow child.yaml did not finish within 0.5 s"
    ends = {e["step"]: e["status"] for e in run.events() if e["type"] == "step_finished"}
    assert ends == {"sub/slow": "interrupted", "sub": "failed"}


def test_an_input_that_renders_to_the_wrong_type_fails_the_step(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    parent = PARENT.replace("words: 3}", 'words: "{{ inputs.topic }}"}')
    path = write(tmp_path, {"suite.yaml": parent, "parts/summarize.yaml": CHILD})
    lm = make_fake_lmstudio()
    run = lmflow(tmp_path, "run", path.name, "--base-url", lm.url)
    assert run.code == 1, run.stderr
    assert_clean(run)
    first = run.result()["steps"][0]
    assert first["error"] == "with: input 'words': 'ants' is not an integer"
    assert "give parts/summarize.yaml's inputs in the step's `with:`" in run.stderr
    assert lm.chat_requests == []


def test_a_child_server_that_reads_an_input_known_only_later_exits_2(tmp_path: Path) -> None:
    parent = (
        "version: 1\nsteps:\n  - {id: make, run: [echo, here]}\n"
        "  - {id: inner, workflow: child.yaml, with: {dir: '{{ steps.make.output.stdout }}'}}\n"
    )
    child = (
        "version: 1\ninputs:\n  dir: {type: string}\n"
        "mcp_servers:\n  fx: {command: srv, args: ['{{ inputs.dir }}']}\n"
        "steps:\n  - {id: echo, tool: fx.echo, with: {text: y}}\n"
    )
    stderr = refused_run(tmp_path, parent, child)
    assert "child.yaml: MCP server 'fx' setting args[0]:" in stderr
    assert "servers start before the first step" in stderr

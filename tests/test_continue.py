"""`continue: STEP_ID`: a model step goes on with the conversation of an earlier one. Real
`lmflow run`s against the fake LM Studio (and the fixture MCP server for tool calls), the
validator, record and replay, and `--resume`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fakes.lmstudio import FakeLMStudio, Refusal
from test_embed_step import replay_without_server
from test_run_cli import Make, fixture, lmflow, workflow
from test_run_cli import tag as tag  # the fixture

from runner.runlog import snapshot_view
from runner.spec import check_file, load_workflow

CHAIN = """
steps:
  - id: draft
    system: You are terse.
    prompt: Write a haiku about queues.
  - id: shorter
    continue: draft
    prompt: Now make it shorter.
  - id: french
    continue: shorter
    prompt: Now in French.
outputs:
  final: "{{ steps.french.output }}"
"""
SCRIPT = ["haiku one", "haiku two", "haiku trois"]
DRAFT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Write a haiku about queues."},
    {"role": "assistant", "content": "haiku one"},
]


def contents(request: dict[str, object]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request["messages"]]  # type: ignore[attr-defined, index]


def test_a_chain_of_steps_continues_one_conversation(tmp_path: Path) -> None:
    with FakeLMStudio(script=SCRIPT) as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, CHAIN), "--base-url", lm.url, "--json")
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["outputs"] == {"final": "haiku trois"}
    first, second, third = lm.chat_requests
    assert first["messages"] == DRAFT[:2]
    assert second["messages"] == [*DRAFT, {"role": "user", "content": "Now make it shorter."}]
    assert contents(third)[-3:] == [
        ("user", "Now make it shorter."),
        ("assistant", "haiku two"),
        ("user", "Now in French."),
    ]
    events = run.events()
    started = {e["step"]: e for e in events if e["type"] == "step_started"}
    assert started["shorter"]["continues"] == "draft" and "continues" not in started["draft"]
    # the log tells what each step adds; the whole conversation of a continued step is kept
    requests = {e["step"]: e for e in events if e["type"] == "llm_request"}
    assert requests["shorter"]["messages"] == [{"role": "user", "content": "Now make it shorter."}]
    finished = {e["step"]: e for e in events if e["type"] == "step_finished"}
    assert finished["draft"]["conversation"] == DRAFT
    assert "conversation" not in finished["french"]  # nobody continues it
    assert all("conversation" not in e for e in snapshot_view(events))


def test_the_continued_conversation_holds_its_tool_calls(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[[("echo", {"text": "hi"})], "echoed hi", "twice: hi hi"])
    body = f"""
        mcp_servers:
          fx: {fixture(tag, "--name", "fx")}
        steps:
          - id: ask
            mcp: [fx]
            tools: [echo]
            prompt: Echo hi.
          - id: again
            continue: ask
            prompt: Say it twice.
        """
    run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, tag=tag)
    assert run.code == 0, run.stderr
    last = lm.chat_requests[-1]
    assert [m["role"] for m in last["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert last["messages"][1]["tool_calls"][0]["function"]["name"] == "echo"
    assert last["messages"][2] == {"role": "tool", "tool_call_id": "call_0_0", "content": "hi"}
    assert "tools" not in last  # the continuing step offers no tools of its own


def test_each_item_of_a_for_each_step_continues_the_same_conversation(tmp_path: Path) -> None:
    body = """
        steps:
          - id: plan
            prompt: Plan a trip.
          - id: detail
            continue: plan
            for_each: [day 1, day 2]
            prompt: "Detail {{ item }}."
        """
    with FakeLMStudio() as lm:  # no script: answers echo the last user message
        run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url)
    assert run.code == 0, run.stderr
    follow_ups = sorted(contents(r) for r in lm.chat_requests[1:])
    head = [("user", "Plan a trip."), ("assistant", "echo: Plan a trip.")]
    assert follow_ups == [
        [*head, ("user", "Detail day 1.")],
        [*head, ("user", "Detail day 2.")],
    ]


def test_a_conditional_step_whose_conversation_failed_says_so(tmp_path: Path) -> None:
    body = """
        steps:
          - id: first
            prompt: hi
            continue_on_error: true
          - id: follow
            continue: first
            if: "true"
            prompt: and then?
        """
    with FakeLMStudio(script=[Refusal(400, "no")]) as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url)
    assert run.code == 1
    steps = {s["id"]: s for s in run.result()["steps"]}
    assert steps["follow"]["error"] == (
        "step 'first' did not succeed, so there is no conversation to continue"
    )
    assert len(lm.chat_requests) == 1


def test_without_if_a_failed_conversation_skips_the_step(tmp_path: Path) -> None:
    body = """
        steps:
          - id: first
            prompt: hi
          - id: follow
            continue: first
            prompt: and then?
        """
    with FakeLMStudio(script=[Refusal(400, "no")]) as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url)
    assert run.code == 1
    steps = {s["id"]: s for s in run.result()["steps"]}
    assert (steps["follow"]["status"], steps["follow"]["reason"]) == (
        "skipped",
        "step 'first' failed",
    )


# --- validation ----------------------------------------------------------------------------


def problems_of(tmp_path: Path, steps: str) -> list[tuple[str, int, str]]:
    path = tmp_path / "wf.yaml"
    path.write_text(f"version: 1\ndefaults: {{model: m}}\nsteps:\n{steps}")
    return [(p.rule, p.line, p.message) for p in check_file(path)[1] if p.is_error]


@pytest.mark.parametrize(
    ("steps", "rule", "line", "message"),
    [
        (
            "  - {id: a, prompt: x}\n  - {id: b, continue: aa, prompt: y}\n",
            "unknown-step",
            5,
            "step 'b' continues unknown step 'aa'",
        ),
        (
            "  - {id: a, continue: b, prompt: x}\n  - {id: b, prompt: y}\n",
            "continue-order",
            4,
            "step 'a' continues step 'b', which comes later",
        ),
        (
            "  - {id: a, continue: a, prompt: x}\n",
            "continue-order",
            4,
            "step 'a' continues step 'a', which is itself",
        ),
        (
            "  - {id: a, run: [ls]}\n  - {id: b, continue: a, prompt: y}\n",
            "continue-not-model",
            5,
            "step 'b' continues step 'a', which is not a model step",
        ),
        (
            "  - {id: a, for_each: [1, 2], prompt: x}\n  - {id: b, continue: a, prompt: y}\n",
            "continue-for-each",
            5,
            "step 'b' continues step 'a', which runs once per item",
        ),
        (
            "  - {id: a, prompt: x}\n  - {id: b, continue: a, system: be nice, prompt: y}\n",
            "continue-with-system",
            5,
            "step 'b' continues step 'a' but sets a system prompt",
        ),
        (
            "  - {id: a, prompt: x}\n  - {id: b, continue: 3, prompt: y}\n",
            "wrong-type",
            5,
            "key 'continue' must be a string",
        ),
    ],
)
def test_validation_of_continue(
    tmp_path: Path, steps: str, rule: str, line: int, message: str
) -> None:
    found = problems_of(tmp_path, steps)
    assert [(r, n) for r, n, _ in found][:1] == [(rule, line)], found
    assert message in found[0][2]


def test_the_continued_step_is_a_dependency(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\ndefaults: {model: m}\nsteps:\n"
        "  - {id: a, prompt: x}\n  - {id: other, prompt: z}\n  - {id: b, continue: a, prompt: y}\n"
    )
    flow = load_workflow(path)
    assert flow.plan.dependencies()["b"] == frozenset({"a"})
    assert flow.steps[2].continue_ == "a"  # type: ignore[union-attr]


# --- record, replay, resume ----------------------------------------------------------------


def test_a_continued_conversation_records_compactly_and_replays(tmp_path: Path) -> None:
    name = workflow(tmp_path, CHAIN)
    with FakeLMStudio(script=SCRIPT) as lm:
        recorded = lmflow(tmp_path, "run", name, "--base-url", lm.url, "--record", "c.yaml")
    assert recorded.code == 0, recorded.stderr
    exchanges = yaml.safe_load((tmp_path / "c.yaml").read_text())["exchanges"]
    # each later request lists only what it adds to the earlier step's conversation
    assert [e["request"].get("continues") for e in exchanges] == [None, 1, 2]
    assert [len(e["request"]["messages"]) for e in exchanges] == [2, 2, 2]
    replayed = replay_without_server(tmp_path, name)
    assert replayed.code == 0, replayed.stderr
    assert json.loads(replayed.stdout)["outputs"] == {"final": "haiku trois"}


def test_resume_hands_a_reused_step_s_conversation_on(tmp_path: Path) -> None:
    name = workflow(tmp_path, CHAIN)
    with FakeLMStudio(script=["haiku one", Refusal(400, "no")]) as lm:
        failed = lmflow(tmp_path, "run", name, "--base-url", lm.url)
    assert failed.code == 1
    with FakeLMStudio(script=["haiku two", "haiku trois"]) as lm:
        resumed = lmflow(tmp_path, "run", name, "--base-url", lm.url, "--resume", "last", "--json")
    assert resumed.code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["outputs"] == {"final": "haiku trois"}
    first, _ = lm.chat_requests  # `draft` was reused, not asked again
    assert first["messages"] == [*DRAFT, {"role": "user", "content": "Now make it shorter."}]

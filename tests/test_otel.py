"""OpenTelemetry export (runner/otel.py): a run's trace reaches a real loopback OTLP/HTTP
receiver (tests/fakes/otlp.py), with the span tree and GenAI attributes the docs promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from fakes.lmstudio import FakeLMStudio, down_url
from fakes.otlp import OtlpReceiver
from mcp_support import fixture_server_entry

ROOT = Path(__file__).resolve().parent.parent
MODEL = "qwen/qwen3-coder-30b"
SECRET = "otel-s3cr3t-value"
CLIENT = 3  # SpanKind.CLIENT in the OTLP protobuf


def answer(request: dict[str, Any]) -> Any:
    """The fake model: a tool call whose argument holds the secret, then an answer."""
    if request["messages"][-1]["role"] == "tool":
        return "done"
    return [("echo", {"text": f"the key is {SECRET}"})]


def write_workflow(directory: Path, tag: str) -> Path:
    path = directory / "wf.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            name: otel-demo
            defaults: {{model: {MODEL}, temperature: 0.1}}
            mcp_servers:
              fx: {fixture_server_entry(tag)}
            steps:
              - id: sum
                tool: fx.add
                with: {{a: 1, b: 2}}
              - id: ask
                mcp: [fx]
                tools: [echo]
                prompt: "Keep {{{{ env.LMFLOW_TEST_SECRET }}}} safe and echo it."
            outputs:
              answer: "{{{{ steps.ask.output }}}}"
            """
        )
    )
    return path


def lmflow(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, "LMFLOW_CACHE_DIR": str(cwd / "cache")}
    otel = [name for name in os.environ if name.startswith("OTEL_")]
    for name in ("LMFLOW_BASE_URL", "LM_API_TOKEN", *otel):
        base.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "lmflow_runner", *args],
        cwd=cwd,
        env={**base, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [span for span in spans if span["parent_id"] == parent["span_id"]]


def test_a_run_exports_its_trace_with_the_genai_conventions(
    tmp_path: Path, process_tag: str
) -> None:
    workflow = write_workflow(tmp_path, process_tag)
    with OtlpReceiver() as otlp, FakeLMStudio(script=[answer, answer]) as lm:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "LMFLOW_TEST_SECRET": SECRET}
        done = lmflow(tmp_path, "run", workflow.name, "--base-url", lm.url, env=env)
    assert done.returncode == 0, done.stderr
    assert otlp.paths == ["/v1/traces"]  # one export, when the run was over
    spans = otlp.spans
    assert len({span["trace_id"] for span in spans}) == 1
    assert {span["resource"]["service.name"] for span in spans} == {"lmflow"}

    (run,) = [span for span in spans if span["parent_id"] is None]
    assert run["name"] == "invoke_workflow otel-demo"
    assert run["attributes"]["gen_ai.operation.name"] == "invoke_workflow"
    assert run["attributes"]["gen_ai.workflow.name"] == "otel-demo"
    assert run["attributes"]["lmflow.run.status"] == "succeeded"

    steps = {span["name"]: span for span in children(spans, run)}
    assert set(steps) == {"step sum", "step ask"}

    # A tool step: one execute_tool span.
    (direct,) = children(spans, steps["step sum"])
    assert direct["name"] == "execute_tool fx.add"
    assert direct["attributes"]["gen_ai.operation.name"] == "execute_tool"
    assert direct["attributes"]["gen_ai.tool.name"] == "fx.add"
    assert json.loads(direct["attributes"]["gen_ai.tool.call.arguments"]) == {"a": 1, "b": 2}

    # A model step: invoke_agent, two chat calls (client spans) and the tool call between them.
    ask = steps["step ask"]
    assert ask["attributes"]["gen_ai.operation.name"] == "invoke_agent"
    assert ask["attributes"]["gen_ai.request.model"] == MODEL
    inside = sorted(children(spans, ask), key=lambda span: span["start"])
    assert [span["name"] for span in inside] == [
        f"chat {MODEL}",
        "execute_tool echo",
        f"chat {MODEL}",
    ]
    for call in (inside[0], inside[2]):
        attributes = call["attributes"]
        assert call["kind"] == CLIENT
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == MODEL
        assert attributes["gen_ai.request.temperature"] == 0.1
        assert attributes["gen_ai.usage.input_tokens"] > 0
        assert attributes["gen_ai.usage.output_tokens"] > 0
    assert inside[0]["attributes"]["gen_ai.response.finish_reasons"] == ["tool_calls"]
    tool = inside[1]["attributes"]
    assert tool["gen_ai.tool.name"] == "echo"
    assert tool["gen_ai.tool.call.arguments"] == json.dumps({"text": "the key is ***"})
    assert tool["gen_ai.tool.call.result"] == "the key is ***"
    step_tokens = ask["attributes"]["gen_ai.usage.input_tokens"]
    assert step_tokens == sum(c["attributes"]["gen_ai.usage.input_tokens"] for c in inside[::2])

    # Every child lies within its parent, and the secret never left the machine.
    by_id = {span["span_id"]: span for span in spans}
    for span in spans:
        if span["parent_id"] is not None:
            parent = by_id[span["parent_id"]]
            assert parent["start"] <= span["start"] <= span["end"] <= parent["end"]
    assert not any(SECRET.encode() in body for body in otlp.bodies)


def test_a_replay_with_otel_flag_is_traced_alike(tmp_path: Path) -> None:
    with OtlpReceiver() as otlp:
        done = lmflow(
            tmp_path,
            "run", str(ROOT / "workflows/meeting-planner.yaml"),
            "--replay", str(ROOT / "tests/cassettes/meeting-planner.yaml"), "--otel", otlp.url,
            env={"LMFLOW_BASE_URL": down_url(), "OTEL_SERVICE_NAME": "nightly-triage"},
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {span["resource"]["service.name"] for span in otlp.spans} == {"nightly-triage"}
    names = [span["name"] for span in otlp.spans]
    assert names.count("invoke_workflow meeting-planner") == 1
    chats = [
        span for span in otlp.spans if span["attributes"].get("gen_ai.operation.name") == "chat"
    ]
    tools = [
        s for s in otlp.spans if s["attributes"].get("gen_ai.operation.name") == "execute_tool"
    ]
    assert chats and tools
    assert all(span["attributes"]["gen_ai.request.model"] for span in chats)
    assert all(span["attributes"]["gen_ai.tool.name"] for span in tools)


def test_a_receiver_that_refuses_the_trace_is_a_warning_not_a_failed_run(tmp_path: Path) -> None:
    with OtlpReceiver(status=400) as otlp:
        done = lmflow(
            tmp_path,
            "run", str(ROOT / "workflows/meeting-planner.yaml"),
            "--replay", str(ROOT / "tests/cassettes/meeting-planner.yaml"), "-q",
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url},
        )  # fmt: skip
    assert done.returncode == 0
    assert "warning: the trace was not exported" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_the_otel_extra(tmp_path: Path) -> None:
    """--otel is an environment error (exit 3) with the install hint; the variable alone,
    perhaps set for other programs, is a note and the run goes on."""
    shadow = tmp_path / "shadow" / "opentelemetry" / "sdk"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('opentelemetry-sdk is not installed')\n")
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(
        f"version: 1\nname: bare\nsteps:\n  - id: a\n    model: {MODEL}\n    prompt: hi\n"
    )
    env = {"PYTHONPATH": str(shadow.parent.parent)}
    with FakeLMStudio() as lm:
        flagged = lmflow(
            tmp_path,
            "run",
            workflow.name,
            "--base-url",
            lm.url,
            "--otel",
            "http://127.0.0.1:9",
            env=env,
        )
        noted = lmflow(
            tmp_path, "run", workflow.name, "--base-url", lm.url,
            env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        )  # fmt: skip
    assert flagged.returncode == 3, flagged.stderr
    assert "needs the otel extra" in flagged.stderr
    assert "pip install 'lmflow-runner[otel]'" in flagged.stderr
    assert noted.returncode == 0, noted.stderr
    assert "note: OpenTelemetry export needs the otel extra" in noted.stderr


def test_an_untraced_run_never_loads_the_sdk(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from lmflow_runner.cli import main
        try:
            main(["run", {str(ROOT / "workflows/meeting-planner.yaml")!r}, "-q",
                  "--replay", {str(ROOT / "tests/cassettes/meeting-planner.yaml")!r}])
        except SystemExit as end:
            assert end.code == 0, end.code
        print("opentelemetry.sdk" in sys.modules)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr

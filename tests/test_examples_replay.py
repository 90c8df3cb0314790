"""The example workflows run from their cassettes and match their snapshots.

These tests use the pytest plugin's fixtures exactly as a user's project would
(runner/pytest_plugin.py); the cassettes come from tests/record_cassettes.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakes.lmstudio import FakeLMStudio, FakeModel, down_url

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(path.stem for path in (ROOT / "workflows").glob("*.yaml"))

pytest_plugins = ("pytester",)


def test_every_example_has_a_cassette() -> None:
    assert EXAMPLES, "no example workflows found"
    missing = [
        name for name in EXAMPLES if not (ROOT / "tests/cassettes" / f"{name}.yaml").exists()
    ]
    assert not missing, f"record them with: python tests/record_cassettes.py {' '.join(missing)}"


# The inputs each cassette was recorded with (tests/record_cassettes.py).
RECORDED_INPUTS = {
    "repo-survey": {"path": "workflows/sample-project", "remember": True},
    "analyze-repo": {"path": "workflows/sample-project"},
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_replays_to_its_snapshot(
    name: str, lmflow_run, lmflow_snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens here: a replay must not need LM Studio.
    monkeypatch.setenv("LMFLOW_BASE_URL", down_url())
    result = lmflow_run(f"workflows/{name}.yaml", inputs=RECORDED_INPUTS.get(name, {}))
    assert result.status == "succeeded", result.error
    assert all(step["status"] in ("succeeded", "skipped") for step in result.steps.values())
    assert result.outputs
    assert (result.run_dir / "events.jsonl").is_file()
    assert result.snapshot_view() == lmflow_snapshot


def test_meeting_planner_outputs_come_from_the_cassette(lmflow_run) -> None:
    result = lmflow_run("workflows/meeting-planner.yaml")
    assert result.outputs["everyone_fits"] is False
    assert [p["name"] for p in result.outputs["schedule"]] == ["Ana", "Kenji", "Priya"]
    assert "Quarterly roadmap review" in result.outputs["invitation"]


def test_analyze_repo_runs_its_analyzers_as_sub_workflows(lmflow_run) -> None:
    result = lmflow_run("workflows/analyze-repo.yaml", inputs=RECORDED_INPUTS["analyze-repo"])
    assert list(result.steps) == ["structure", "errors", "tests", "report"]
    assert result.steps["tests"].output == {"untested": ["tinyq/storage.py", "tinyq/worker.py"]}
    assert result.outputs["modules"] == ["tinyq/queue.py", "tinyq/storage.py", "tinyq/worker.py"]
    assert [f["path"] for f in result.outputs["error_handling"]] == [
        "tinyq/queue.py",
        "tinyq/worker.py",
    ]
    nested = {e["step"] for e in result.events if "/" in e.get("step", "")}
    assert nested == {"structure/modules", "errors/review", "tests/coverage"}


def test_the_commit_message_is_committed_only_when_approved(lmflow_run) -> None:
    approved = lmflow_run("workflows/commit-message.yaml")  # the cassette's answer: yes
    assert approved.steps["approve"].output is True
    assert approved.outputs["committed"] is True
    refused = lmflow_run("workflows/commit-message.yaml", answers={"approve": "no"})
    assert refused.steps["commit"].status == "skipped"
    assert refused.outputs["result"] == "not committed"
    assert refused.outputs["message"].startswith("Skip blank lines when reading CSV files")


def test_the_result_reads_by_attribute_all_the_way(lmflow_run) -> None:
    result = lmflow_run("workflows/meeting-planner.yaml")
    check = result.steps["check"]
    assert (result.status, check.status) == ("succeeded", "succeeded")
    assert check.output["everyone_fits"] is False
    assert check.rounds >= 1 and check.usage.prompt_tokens > 0
    assert result.steps["alternatives"].status in ("succeeded", "skipped")
    # The dict access of earlier versions still works.
    assert check["output"] == check.output
    assert check["usage"] == {
        "prompt_tokens": check.usage.prompt_tokens,
        "completion_tokens": check.usage.completion_tokens,
    }


WORKFLOW = """\
version: 1
name: echo
defaults: {model: qwen/qwen3-4b}
inputs:
  word: {type: string, default: hello}
steps:
  - id: say
    prompt: "Say {{ inputs.word }}"
outputs:
  said: "{{ steps.say.output }}"
"""

CASSETTE = """\
version: 1
workflow: echo
exchanges:
- n: 1
  kind: llm
  step: say
  round: 1
  request:
    model: qwen/qwen3-4b
    messages:
    - {role: user, content: Say hello}
  response:
    content: hello
    finish_reason: stop
"""

TEST_FILE = """\
def test_echo(lmflow_run, lmflow_snapshot):
    result = lmflow_run("echo.yaml", inputs={"word": WORD})
    assert result.outputs == {"said": "hello"}
    assert result.snapshot_view() == lmflow_snapshot
"""


def test_plugin_in_a_users_project(pytester: pytest.Pytester) -> None:
    """A project with a workflow, a cassette and a test: the snapshot is written as YAML,
    then checked; a request the cassette lacks fails the test with the closest one."""
    pytester.makefile(".yaml", echo=WORKFLOW)
    (pytester.path / "cassettes").mkdir()
    (pytester.path / "cassettes" / "echo.yaml").write_text(CASSETTE)
    pytester.makepyfile(test_echo="WORD = 'hello'\n" + TEST_FILE)

    pytester.runpytest("--snapshot-update").assert_outcomes(passed=1)
    stored = pytester.path / "__snapshots__" / "test_echo" / "test_echo.yaml"
    text = stored.read_text()
    assert "type: llm_response" in text and "content: hello" in text
    assert "run_id" not in text and "<workflow.dir>/echo.yaml" in text

    pytester.runpytest().assert_outcomes(passed=1)

    pytester.makepyfile(test_echo="WORD = 'bye'\n" + TEST_FILE)
    failed = pytester.runpytest()
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(
        [
            "*replay miss*",
            "*-- {role: user, content: Say hello}",
            "*+- {role: user, content: Say bye}",
        ]
    )
    assert "Traceback" not in failed.stdout.str()


TWO_RECORDINGS = """\
def test_hello(lmflow_run):
    assert lmflow_run("echo.yaml", inputs={"word": "hello"}).outputs == {"said": "echo: Say hello"}

def test_bye(lmflow_run):
    lmflow_run("echo.yaml", inputs={"word": "bye"})

def test_bye_in_its_own_cassette(lmflow_run):
    result = lmflow_run("echo.yaml", inputs={"word": "bye"}, cassette="cassettes/echo-bye.yaml")
    assert result.outputs == {"said": "echo: Say bye"}
"""


def test_recording_one_cassette_twice_in_a_session_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--lmflow-record`: a second run of a workflow would silently replace the first
    recording of its default cassette; it fails and names `cassette=` instead."""
    pytester.makefile(".yaml", echo=WORKFLOW)
    pytester.makepyfile(test_twice=TWO_RECORDINGS)
    with FakeLMStudio(models=[FakeModel("qwen/qwen3-4b", loaded=True)]) as lm:  # echoes
        monkeypatch.setenv("LMFLOW_BASE_URL", lm.url)
        outcome = pytester.runpytest("--lmflow-record")
    outcome.assert_outcomes(passed=2, failed=1)
    outcome.stdout.fnmatch_lines(
        [
            "*cassettes/echo.yaml was already recorded in this session "
            "(by test_twice.py::test_hello)*",
            "*cassette=*",
        ]
    )
    assert "echo: Say hello" in (pytester.path / "cassettes" / "echo.yaml").read_text()
    assert "echo: Say bye" in (pytester.path / "cassettes" / "echo-bye.yaml").read_text()


def readme_main_job() -> list[str]:
    """The `lmflow ...` part of the README's first quick-start command."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next(line for line in readme.splitlines() if "pip install -e . && lmflow" in line)
    return shlex.split(line.split("&& ")[-1])


def test_the_readme_main_job_runs_with_live_mcp_servers(tmp_path: Path) -> None:
    """The README's first command, as a user runs it: real servers (npx), recorded model."""
    if shutil.which("npx") is None:
        pytest.skip("npx is not installed")
    for name in ("workflows", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    argv = readme_main_job()
    assert argv[:2] == ["lmflow", "run"] and "--live-tools" in argv
    env = {**os.environ, "LMFLOW_BASE_URL": down_url(), "LMFLOW_CACHE_DIR": str(tmp_path / "c")}
    done = subprocess.run(
        [sys.executable, "-m", "runner", *argv[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "tinyq/worker.py" in done.stdout
    (run_dir,) = (tmp_path / ".lmflow" / "runs").iterdir()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    live_results = [e for e in events if e["type"] == "tool_result" and e["step"] == "survey"]
    assert live_results and not any(e["is_error"] for e in live_results)
    assert (run_dir / "mcp-filesystem.stderr.log").exists()  # the real server ran

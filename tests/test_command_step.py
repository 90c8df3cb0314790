"""Command steps (`run:`): real processes started by a real `lmflow run`, against the fake
LM Studio; every process a command starts carries the test's tag, so the tests can prove
that none outlives its step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fakes.lmstudio import FakeLMStudio
from mcp_support import TAG_VARIABLE, wait_until_gone
from test_run_cli import Make, interrupt_when, lmflow, spawn, workflow
from test_run_cli import tag as tag  # the fixture

from runner.spec import check_file

PY = json.dumps(sys.executable)


def test_arguments_output_and_ok_codes(tmp_path: Path, make_fake_lmstudio: Make) -> None:
    lm = make_fake_lmstudio()
    body = """
        inputs:
          files: {type: array, default: [a.txt, b c.txt]}
        steps:
          - id: args
            run: [printf, "%s|", "{{ inputs.files }}", "{{ 3 }}", "{{ true }}"]
          - id: shell
            run: "echo out; echo err >&2; exit 3"
            shell: true
            ok_codes: [0, 3]
          - id: ask
            prompt: "exit code {{ steps.shell.output.exit_code }}: {{ steps.shell.output.stdout }}"
        outputs:
          args: "{{ steps.args.output.stdout }}"
          shell: "{{ steps.shell.output }}"
        """
    run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, "--json")
    assert run.code == 0, run.stderr
    outputs = json.loads(run.stdout)["outputs"]
    # a list item gives one argument per element, a space inside one stays inside it
    assert outputs["args"] == "a.txt|b c.txt|3|true|"
    assert outputs["shell"] == {"exit_code": 3, "stdout": "out\n", "stderr": "err\n"}
    assert lm.chat_requests[0]["messages"][-1]["content"] == "exit code 3: out\n"
    started = [e for e in run.events() if e["type"] == "command_started"]
    assert [e["argv"][:2] for e in started] == [["printf", "%s|"], ["/bin/sh", "-c"]]
    assert all(e["cwd"] == "." for e in started)


def test_an_exit_code_outside_ok_codes_fails_the_step_with_its_output(tmp_path: Path) -> None:
    body = """
        steps:
          - id: check
            run: [sh, -c, "echo partial; echo 'first problem' >&2; echo 'E: the cause' >&2; exit 2"]
            continue_on_error: true
          - id: missing
            run: [no-such-program-for-lmflow]
            continue_on_error: true
          - id: nowhere
            run: [pwd]
            cwd: does/not/exist
        """
    with FakeLMStudio() as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url)
    assert run.code == 1
    steps = {s["id"]: s for s in run.result()["steps"]}
    assert steps["check"]["status"] == "failed"
    assert steps["check"]["error"] == "command sh exited with 2: E: the cause"
    assert steps["check"]["output"] == {
        "exit_code": 2,
        "stdout": "partial\n",
        "stderr": "first problem\nE: the cause\n",
    }
    assert steps["missing"]["error"] == "command not found: no-such-program-for-lmflow"
    assert steps["nowhere"]["error"].startswith("working directory not found: ")
    assert "Traceback" not in run.stderr


def test_a_command_sees_only_its_env_and_its_secrets_are_masked(tmp_path: Path) -> None:
    body = """
        steps:
          - id: env
            run: [env]
            env: {GIVEN: "{{ env.LMFLOW_TEST_GIVEN }}"}
        outputs:
          env: "{{ steps.env.output.stdout }}"
        """
    secrets = {"LMFLOW_TEST_GIVEN": "given-secret-value", "LMFLOW_TEST_OTHER": "other-secret"}
    with FakeLMStudio() as lm:
        run = lmflow(
            tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, "--json", env=secrets
        )
    assert run.code == 0, run.stderr
    names = {line.split("=", 1)[0] for line in json.loads(run.stdout)["outputs"]["env"].split()}
    assert "GIVEN" in names and "PATH" in names
    assert not names & {"LMFLOW_TEST_OTHER", "LMFLOW_TEST_GIVEN", TAG_VARIABLE}
    # stdout is the run's answer, for the user who asked; what is written down is masked
    for path in run.run_dir.rglob("*.*"):
        assert "given-secret-value" not in path.read_text(), path
    assert "given-secret-value" not in run.stderr
    assert "GIVEN=***" in (run.run_dir / "events.jsonl").read_text()


def test_long_output_is_cut_in_the_step_and_kept_whole_beside_the_log(tmp_path: Path) -> None:
    body = f"""
        steps:
          - id: loud
            run: [{PY}, -c, "print('x' * 200000)"]
            max_output_chars: 1000
        outputs:
          loud: "{{{{ steps.loud.output.stdout }}}}"
        """
    with FakeLMStudio() as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, "--json")
    assert run.code == 0, run.stderr
    shown = json.loads(run.stdout)["outputs"]["loud"]
    assert shown.startswith("x" * 1000 + "\n[... 199,001 more characters cut")
    (kept,) = [e for e in run.events() if e["type"] == "command_output"]
    assert kept["stream"] == "stdout" and kept["full_chars"] == 200001
    assert (run.run_dir / kept["full_result"]).read_text() == "x" * 200000 + "\n"
    assert max(len(line) for line in (run.run_dir / "events.jsonl").open()) < 10_000


def test_a_command_that_runs_out_of_time_is_stopped_with_what_it_started(
    tmp_path: Path, tag: str
) -> None:
    body = f"""
        steps:
          - id: slow
            run: [sh, -c, "sleep 60 & sleep 60"]
            env: {{{TAG_VARIABLE}: {tag}}}
            timeout: 1
        """
    with FakeLMStudio() as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, tag=tag)
    assert run.code == 1
    (step,) = run.result()["steps"]
    assert step["error"] == "command sh did not finish within 1 s"
    assert wait_until_gone(tag, within=5) == []


def test_ctrl_c_during_a_command_stops_its_tree(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio()
    marker = tmp_path / "started"
    body = f"""
        steps:
          - id: slow
            run: [sh, -c, "sleep 60 & touch {marker}; sleep 60"]
            env: {{{TAG_VARIABLE}: {tag}}}
        """
    process = spawn(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, tag=tag)
    _, err = interrupt_when(process, marker.exists, "the command")
    assert process.returncode == 130, err
    assert wait_until_gone(tag, within=5) == []
    assert "Traceback" not in err


def test_validate_checks_commands_and_never_runs_them(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\nsteps:\n"
        f"  - {{id: good, run: [touch, '{marker}']}}\n"
        "  - {id: line, run: 'make test'}\n"
        "  - {id: list, run: [make, test], shell: true}\n"
        "  - {id: mixed, run: [make], prompt: hi}\n"
    )
    _, found = check_file(path)
    problems = {(p.line, p.rule) for p in found}
    assert problems == {
        (4, "command-string-without-shell"),
        (5, "command-list-with-shell"),
        (6, "unknown-key"),
    }
    assert not marker.exists()

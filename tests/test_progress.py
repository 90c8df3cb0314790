"""Progress on stderr: the live view on a terminal (rich, checked through a real
pseudo-terminal), the plain line-per-event view in pipes and CI logs, `--quiet`, and the
summary table that ends a run (runner/commands/_console.py, _live.py, _tracker.py)."""

from __future__ import annotations

import io
import os
import pty
import re
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fakes.lmstudio import FakeLMStudio
from mcp_support import TAG_VARIABLE, fixture_server_entry
from rich.console import Console

from lmflow_runner.commands._live import LiveView
from lmflow_runner.runlog import RunLog

MODEL = "qwen/qwen3-coder-30b"  # loaded on the fake by default
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def write_workflow(directory: Path, tag: str) -> Path:
    path = directory / "wf.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            name: progress
            defaults: {{model: {MODEL}}}
            mcp_servers:
              fx: {fixture_server_entry(tag)}
            steps:
              - id: survey
                name: Survey the files
                mcp: [fx]
                prompt: survey please
              - id: poem
                name: Write a poem
                prompt: a poem please
            outputs:
              survey: "{{{{ steps.survey.output }}}}"
              poem: "{{{{ steps.poem.output }}}}"
            """
        )
    )
    return path


def by_prompt(survey: str, poem: str) -> list[Callable[[dict[str, Any]], str]]:
    """The fake's script for write_workflow's two steps, answering each by its prompt: they
    run at once, so their requests reach the fake in either order."""

    def answer(body: dict[str, Any]) -> str:
        return survey if "survey please" in str(body["messages"]) else poem

    return [answer, answer]


def environment(cwd: Path, tag: str) -> dict[str, str]:
    env = {**os.environ, "LMFLOW_CACHE_DIR": str(cwd / "cache"), TAG_VARIABLE: tag}
    for name in ("LMFLOW_BASE_URL", "LM_API_TOKEN", "NO_COLOR", "FORCE_COLOR", "CI"):
        env.pop(name, None)
    env["TERM"] = "xterm-256color"
    return env


def run_on_a_terminal(cwd: Path, args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """`lmflow ARGS` with stderr on a pseudo-terminal (120x40) and stdout on a pipe: returns
    the exit code, stdout and everything drawn on the terminal."""
    master, slave = pty.openpty()
    import fcntl
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "lmflow_runner", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    drawn = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        drawn.extend(chunk)
    os.close(master)
    stdout = process.stdout.read().decode() if process.stdout else ""
    code = process.wait(timeout=60)
    return code, stdout, drawn.decode("utf-8", errors="replace")


def test_a_run_on_a_terminal_is_drawn_live_then_summed_up(tmp_path: Path, process_tag: str) -> None:
    workflow = write_workflow(tmp_path, process_tag)
    script = by_prompt("first line of the survey\nsecond line", "roses are red")
    with FakeLMStudio(script=script, chat_delay=0.4) as lm:
        code, stdout, drawn = run_on_a_terminal(
            tmp_path,
            ["run", workflow.name, "--base-url", lm.url],
            environment(tmp_path, process_tag),
        )
    assert code == 0, drawn
    assert "\x1b[?25l" in drawn  # rich's live region hides the cursor: the live view drew
    screen = ANSI.sub("", drawn)
    assert "Traceback" not in screen
    # Start-up phases while they last, then what they took.
    assert "checking models" in screen
    assert "starting server fx" in screen
    assert "✓ models checked in" in screen
    assert "✓ server fx ready in" in screen
    # A running step: its id, its `name:`, its model, its round and elapsed time.
    running = [line for line in screen.splitlines() if "Survey the files" in line]
    assert any(MODEL in line and "round 1" in line and re.search(r"\d\.\ds", line)
               for line in running), running  # fmt: skip
    assert any("poem  Write a poem" in line for line in screen.splitlines())
    # The summary table at the end, one row per step.
    header = next(line for line in screen.splitlines() if line.lstrip().startswith("step"))
    for column in ("model", "status", "rounds", "tool calls", "tokens", "tok/s", "time"):
        assert column in header
    rows = {
        words[0]: words
        for words in (line.split() for line in screen.splitlines())
        if words and words[0] in ("survey", "poem") and MODEL in words
    }
    assert rows["survey"][1:4] == [MODEL, "succeeded", "1"]
    assert rows["poem"][1:4] == [MODEL, "succeeded", "1"]
    # Outputs on stdout; a multi-line value's further lines indented under its name.
    assert "survey: first line of the survey\n  second line\n" in stdout


def test_several_running_steps_are_shown_at_once_with_their_speed() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    view = LiveView(console=console)
    log = RunLog("run-1")
    log.subscribe(view)
    try:
        log.emit("run_started", steps=["survey", "poem"])
        log.emit("step_started", "survey", name="Survey the files", model="m-one", kind="agent")
        log.emit("step_started", "poem", name="Write a poem", model="m-two", kind="agent")
        log.emit("llm_request", "survey", round=1)
        log.emit("llm_request", "poem", round=1)
        log.emit("llm_response", "survey", round=1, usage={"completion_tokens": 10},
                 served={"tokens_per_s": 42.5, "ttft_s": 0.25})  # fmt: skip
        log.emit("llm_request", "survey", round=2)
        screen = Console(file=io.StringIO(), width=120, color_system=None)
        screen.print(view.__rich__())  # the live region as the next refresh draws it
    finally:
        view.close()
    lines = ANSI.sub("", screen.file.getvalue()).splitlines()  # type: ignore[attr-defined]
    (survey,) = [line for line in lines if "survey" in line]
    (poem,) = [line for line in lines if "poem" in line]
    assert "Survey the files" in survey and "m-one" in survey and "round 2" in survey
    assert "42.5 tok/s" in survey  # as the client measured it
    assert "Write a poem" in poem and "m-two" in poem and "round 1" in poem
    assert "tok/s" not in poem  # no answer yet


def test_without_a_terminal_progress_is_one_plain_line_per_event(
    tmp_path: Path, process_tag: str
) -> None:
    workflow = write_workflow(tmp_path, process_tag)
    with FakeLMStudio(script=by_prompt("two\nlines", "roses")) as lm:
        done = subprocess.run(
            [sys.executable, "-m", "lmflow_runner", "run", workflow.name, "--base-url", lm.url],
            cwd=tmp_path,
            env=environment(tmp_path, process_tag),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stderr  # no colours, no cursor moves in a log file
    lines = done.stderr.splitlines()
    assert "… checking models" in lines
    assert "… starting server fx" in lines
    assert f"▶ survey  Survey the files · {MODEL}" in lines
    answer = re.compile(r"    survey round 1: \d+ tokens, [\d.]+ tok/s, first token [\d.]+s")
    assert any(answer.fullmatch(line) for line in lines), lines
    assert lines[-3].split() == ["step", "model", "status", "rounds", "tool", "calls", "tokens",
                                 "tok/s", "time"]  # fmt: skip
    assert lines[-2].split()[:4] == ["survey", MODEL, "succeeded", "1"]
    assert lines[-1].split()[:4] == ["poem", MODEL, "succeeded", "1"]


def test_quiet_shows_no_progress(tmp_path: Path, process_tag: str) -> None:
    workflow = write_workflow(tmp_path, process_tag)
    with FakeLMStudio(script=by_prompt("a", "b")) as lm:
        code, stdout, drawn = run_on_a_terminal(
            tmp_path,
            ["run", workflow.name, "--base-url", lm.url, "--quiet"],
            environment(tmp_path, process_tag),
        )
    assert code == 0
    assert ANSI.sub("", drawn).strip() == ""
    assert stdout == "survey: a\npoem: b\n"


def test_validate_and_piped_runs_never_import_rich(tmp_path: Path) -> None:
    """rich costs ~25-50 ms of start-up: only a terminal that shows the live view pays it."""
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"version: 1\nname: x\nsteps:\n  - id: a\n    model: {MODEL}\n"
                        "    prompt: hi\n")  # fmt: skip
    code = textwrap.dedent(
        f"""
        import sys
        from lmflow_runner.cli import main
        try:
            main(["validate", "--offline", {str(workflow)!r}])
        except SystemExit:
            pass
        print("rich" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr


def test_a_failed_step_error_keeps_its_lines_together(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    view = LiveView(console=console)
    log = RunLog("run-1")
    log.subscribe(view)
    log.emit("run_started", steps=["a"])
    log.emit("step_started", "a", name=None, model="m", kind="agent")
    log.emit("step_finished", "a", status="failed", error="first\nsecond", rounds=1,
             tool_calls=0, duration=0.5, usage={})  # fmt: skip
    log.emit("run_finished", status="failed", outputs={}, duration=0.6, usage={})
    shown = ANSI.sub("", console.file.getvalue())  # type: ignore[attr-defined]
    assert "✗ a failed: first\n      second" in shown
    assert not view._started  # the view stopped itself at run_finished


def test_speed_is_what_the_client_measured_and_a_replay_has_none() -> None:
    from lmflow_runner.speed import response_speed

    usage = {"completion_tokens": 84}
    measured = {"usage": usage, "served": {"tokens_per_s": 21.5, "ttft_s": 0.9, "seconds": 4}}
    assert response_speed(measured) == (0.9, 21.5)
    unstreamed = {"usage": usage, "served": {"seconds": 4.0}}  # counted over the request
    assert response_speed(unstreamed) == (None, 21.0)
    # a replay answers in microseconds: 84 tokens would read as ~400,000 tok/s
    assert response_speed({"usage": usage}) == (None, None)

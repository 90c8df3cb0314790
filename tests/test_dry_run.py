"""`lmflow run --dry-run`: each step's rendered prompt or tool arguments, with stand-ins for
what only the run knows; exit 0, nothing sent to LM Studio, no server started, no log."""

from __future__ import annotations

from pathlib import Path

from test_run_cli import Make, assert_clean, lmflow, workflow

DRY = """
inputs:
  topic: {type: string}
  n: {type: integer, default: 2}
mcp_servers:
  fx: {command: /nonexistent/server}
steps:
  - id: fetch
    tool: fx.echo
    with: {text: "about {{ inputs.topic }}", token: "{{ env.DRY_SECRET }}"}
  - id: ask
    system: You answer in {{ inputs.n }} sentences.
    prompt: |
      Topic: {{ inputs.topic }}
      Notes: {{ steps.fetch.output.result }}
  - id: each
    for_each: "{{ steps.ask.output | list }}"
    if: steps.ask.status == 'succeeded'
    prompt: "Item {{ loop.index }}: {{ item }} ({{ steps.ask.output | length + 'x' }})"
"""


def test_dry_run_prints_rendered_steps_and_sends_nothing(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    lm = make_fake_lmstudio(script=[])
    file = workflow(tmp_path, DRY)
    secret = "hunter2-very-secret"
    run = lmflow(
        tmp_path,
        "run",
        file,
        "--dry-run",
        "-i",
        "topic=owls",
        "--base-url",
        lm.url,
        env={"DRY_SECRET": secret},
    )
    assert run.code == 0, run.stderr
    assert_clean(run)
    assert lm.requests == []  # not even the model list
    assert not (tmp_path / ".lmflow").exists()
    assert secret not in run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[:2] == [
        "▶ fetch  tool fx.echo",
        '    with: {"text": "about owls", "token": "***"}',
    ]
    assert "▶ ask  model qwen/qwen3-coder-30b" in lines
    assert "      You answer in 2 sentences." in lines
    assert "      Topic: owls" in lines
    assert "      Notes: <steps.fetch.output.result>" in lines  # known only during the run
    assert "    if: steps.ask.status == 'succeeded'" in lines
    assert "    for_each: {{ steps.ask.output | list }}" in lines
    # A template that cannot work on a stand-in says so instead of failing the dry run.
    assert any(line.startswith("    cannot render before the run: ") for line in lines)
    assert "dry run: 3 step(s)" in run.stderr


def test_dry_run_still_checks_the_inputs(tmp_path: Path) -> None:
    file = workflow(tmp_path, DRY)
    run = lmflow(tmp_path, "run", file, "--dry-run", "-i", "n=lots", "-i", "topic=x")
    assert run.code == 2
    assert "n" in run.stderr and run.stdout == ""


def test_dry_run_shows_a_command_steps_arguments_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = f"""
        inputs:
          name: {{type: string, default: "two words"}}
        steps:
          - id: make
            run: [touch, "{marker}", "{{{{ inputs.name }}}}"]
            cwd: sub
        """
    run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--dry-run")
    assert run.code == 0, run.stderr
    assert run.stdout.splitlines()[:2] == [
        "▶ make  command  (cwd: sub)",
        f"    with: touch {marker} 'two words'",
    ]
    assert not marker.exists()

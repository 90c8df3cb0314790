"""What other tools run: the pre-commit hook and click's shell completion scripts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_the_pre_commit_hook_validates_workflow_files_offline() -> None:
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "lmflow-validate" and hook["language"] == "python"
    assert hook["entry"] == "lmflow validate --offline"
    files = re.compile(hook["files"])
    assert files.search("workflows/meeting-planner.yaml")
    assert files.search("workflows/nested/x.yml")
    for other in (".github/workflows/ci.yml", "tests/cassettes/changelog.yaml", "a.yaml"):
        assert not files.search(other), other
    # What pre-commit would pass: this repository's workflow files, all valid.
    tracked = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "workflows").rglob("*.y*ml"))
    chosen = [name for name in tracked if files.search(name)]
    assert chosen
    command = [sys.executable, "-m", "runner", *hook["entry"].split()[1:], *chosen]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _lmflow_completion lmflow"),
        ("zsh", "#compdef lmflow"),
        ("fish", "complete --no-files --command lmflow"),
    ],
)
def test_shell_completion_scripts_are_produced(shell: str, marker: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runner"],
        env={**os.environ, "_LMFLOW_COMPLETE": f"{shell}_source"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout


def test_completion_offers_commands_and_options() -> None:
    def complete(words: str, index: int) -> list[str]:
        env = {
            **os.environ,
            "_LMFLOW_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(index),
        }
        done = subprocess.run(
            [sys.executable, "-m", "runner"], env=env, capture_output=True, text=True, timeout=60
        )
        return done.stdout.split()

    assert complete("lmflow val", 1) == ["plain,validate"]
    assert "plain,--exclude" in complete("lmflow validate --ex", 2)


def lmflow(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_init_writes_a_starter_that_validates(tmp_path: Path) -> None:
    done = lmflow(tmp_path, "init", "my flow")
    assert done.returncode == 0, done.stderr
    written = tmp_path / "my flow.yaml"
    assert f"wrote {written.name}" in done.stdout
    text = written.read_text()
    assert text.count("\n#") >= 5  # commented for a newcomer
    assert 'name: "my flow"' in text
    checked = lmflow(tmp_path, "validate", "--offline", written.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 warning(s)" in checked.stderr
    # Never over an existing file by accident.
    again = lmflow(tmp_path, "init", "my flow")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert lmflow(tmp_path, "init", "my flow", "--force").returncode == 0
    default = lmflow(tmp_path, "init")
    assert default.returncode == 0 and (tmp_path / "workflow.yaml").is_file()


def test_the_help_lists_init(tmp_path: Path) -> None:
    done = lmflow(tmp_path, "--help")
    assert re.search(r"^  init +Write a commented starter workflow\.$", done.stdout, re.M)

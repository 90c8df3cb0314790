"""The complete example of docs/workflow-reference.md runs as written: the fake LM Studio
answers, the real npm filesystem server reads the project the `path` input names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fakes.lmstudio import DEFAULT_MODELS, FakeModel
from mcp_support import TAG_VARIABLE
from test_run_cli import Make, assert_clean, lmflow

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "workflow-reference.md"
NPX_SERVER = 'command: npx\n    args: ["-y", "@modelcontextprotocol/server-filesystem", '


def complete_example() -> str:
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split("## A complete example", 1)[1]
    found = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


@pytest.mark.npm
def test_the_reference_complete_example_reads_the_readme_of_the_given_path(
    tmp_path: Path, make_fake_lmstudio: Make, filesystem_server_js: Path, process_tag: str
) -> None:
    example = complete_example()
    assert NPX_SERVER in example
    # The same server from the pinned local install (no network), tagged for the process check.
    local = (
        f"command: node\n    env: {{{TAG_VARIABLE}: {process_tag}}}\n"
        f"    args: [{json.dumps(str(filesystem_server_js))}, "
    )
    (tmp_path / "readme-review.yaml").write_text(example.replace(NPX_SERVER, local))
    project = tmp_path / "proj"
    project.mkdir()
    (project / "README.md").write_text("# proj\nRun `make` to build.\n")
    lm = make_fake_lmstudio(
        models=[*DEFAULT_MODELS, FakeModel("qwen/qwen3-4b-2507", loaded=True)],
        script=[json.dumps({"suggestions": ["Say what make builds"]}), "Explain the build"],
    )
    run = lmflow(
        tmp_path,
        "run",
        "readme-review.yaml",
        "-i",
        "path=proj",
        "--base-url",
        lm.url,
        tag=process_tag,
    )
    assert run.code == 0, run.stderr
    assert_clean(run)
    review, title = lm.chat_requests
    prompt = review["messages"][-1]["content"]
    assert "Here is the README of the project in proj:\n# proj\nRun `make` to build." in prompt
    assert title["model"] == "qwen/qwen3-4b-2507"
    assert run.stdout == '["Say what make builds"]\n'  # the one output, as JSON

"""Secrets from the environment never reach a run directory, a cassette or a snapshot.

The secret goes into the headers of a real MCP server over streamable HTTP (which echoes it
back as a tool result), into a prompt (which the scripted model repeats in a tool call and
in its answer), and the LM Studio bearer token guards the fake server. Then every file is
searched for it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from fakes.lmstudio import FakeLMStudio, FakeModel, down_url

from runner.replay import to_yaml
from runner.runlog import read_events, snapshot_view

SECRET = "s3cr3t-Header-Value-42"
LM_TOKEN = "lm-token-0123456789"
MODEL = "qwen/qwen3-4b"

WORKFLOW = f"""\
version: 1
name: secrets
lmstudio: {{token_env: LM_API_TOKEN}}
defaults: {{model: {MODEL}}}
inputs:
  url: {{type: string}}
mcp_servers:
  fx:
    url: "{{{{ inputs.url }}}}"
    headers: {{Authorization: "Bearer {{{{ env.FX_TOKEN }}}}"}}
steps:
  - id: header
    tool: fx.header
    with: {{key: authorization}}
  - id: ask
    mcp: [fx]
    tools: [echo]
    prompt: "The key is {{{{ env.FX_TOKEN }}}}. Echo it, then tell me."
outputs:
  said: "{{{{ steps.ask.output }}}}"
  header: "{{{{ steps.header.output }}}}"
"""


def key_in(request: dict[str, Any]) -> str:
    return re.search(r"The key is (\S+)\.", request["messages"][0]["content"]).group(1)  # type: ignore[union-attr]


SCRIPT = [
    lambda request: [("echo", {"text": key_in(request)})],
    lambda request: f"The key is {key_in(request)}.",
]


def lmflow(*args: str, cwd: Path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FX_TOKEN": SECRET, "LM_API_TOKEN": LM_TOKEN, **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_secrets_appear_nowhere(tmp_path: Path, http_fixture_url: str) -> None:
    workflow = tmp_path / "secrets.yaml"
    workflow.write_text(WORKFLOW)
    cassette = tmp_path / "cassettes" / "secrets.yaml"
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], token=LM_TOKEN, script=SCRIPT) as lm:
        recorded = lmflow(
            "run", str(workflow), "-i", f"url={http_fixture_url}", "--base-url", lm.url,
            "--record", str(cassette), "-v", cwd=tmp_path,
        )  # fmt: skip
        # The secret really travelled: in the prompt, and the model echoed it.
        assert SECRET in json.dumps(lm.chat_requests[0])
    assert recorded.returncode == 0, recorded.stderr

    replayed = lmflow(
        "run", str(workflow), "-i", f"url={http_fixture_url}", "--replay", str(cassette),
        "--json", cwd=tmp_path, LMFLOW_BASE_URL=down_url(),
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    outputs = json.loads(replayed.stdout)["outputs"]
    assert outputs == {"said": "The key is ***.", "header": {"result": "Bearer ***"}}

    runs = sorted((tmp_path / ".lmflow" / "runs").iterdir())
    assert len(runs) == 2
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    for run in runs:
        events = read_events(run / "events.jsonl").events
        (snapshots / f"{run.name}.yaml").write_text(to_yaml(snapshot_view(events)))
    assert "Bearer ***" in (snapshots / f"{runs[0].name}.yaml").read_text()

    for secret in (SECRET, LM_TOKEN):
        assert files_holding(tmp_path, secret) == [], secret
        # The progress view is masked too; stdout is the run's own outputs, for the user.
        assert secret not in recorded.stderr
        assert secret not in replayed.stdout + replayed.stderr
    assert "***" in cassette.read_text()

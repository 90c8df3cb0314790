"""`lmflow --help` and `lmflow validate --offline` must not pay for the network stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("httpx", "httpx2", "mcp", "diskcache", "anyio")

PROBE = """
import json, sys
from runner.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def probe(*argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_help_imports_no_heavy_module() -> None:
    outcome = probe("--help")
    assert outcome == {"code": 0, "heavy": []}


def test_offline_validate_imports_no_heavy_module(tmp_path: Path) -> None:
    workflow = tmp_path / "hello.yaml"
    workflow.write_text("version: 1\nsteps:\n  - id: hi\n    model: m\n    prompt: Hello\n")
    outcome = probe("validate", "--offline", str(workflow))
    assert outcome == {"code": 0, "heavy": []}


RUN_PROBE = """
import asyncio, json, sys
from pathlib import Path
from runner.runtime import RunOptions, run_workflow
from runner.spec import load_workflow
url, path, runs = sys.argv[1:]
options = RunOptions(base_url=url, runs_dir=Path(runs))
result = asyncio.run(run_workflow(load_workflow(Path(path)), {{}}, options))
mcp = sorted(m for m in sys.modules if m.split(".")[0] == "mcp")
print(json.dumps({{"status": result.status, "mcp": mcp[:3]}}))
"""


def test_a_run_whose_steps_use_no_mcp_server_does_not_import_the_sdk(
    tmp_path: Path, fake_lmstudio
) -> None:
    """The MCP SDK takes half a second or more to import: a run with only model steps must
    not pay for it (it did, for an empty set of sessions)."""
    workflow = tmp_path / "hello.yaml"
    workflow.write_text(
        "version: 1\nmcp_servers:\n  unused: {command: nowhere}\n"
        "steps:\n  - id: hi\n    model: qwen/qwen3-coder-30b\n    prompt: Hello\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", RUN_PROBE.format(), fake_lmstudio.url, str(workflow), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"status": "succeeded", "mcp": []}

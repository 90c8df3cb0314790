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

"""lmflow as the client of the MCP conformance suite's client scenarios.

`conformance client --command "python tests/conformance/client.py" --scenario S` starts a
test server for scenario S and runs this script with the server's URL as the last argument
and `MCP_CONFORMANCE_SCENARIO=S`. The script runs lmflow itself, as a user would: `lmflow
run` of the scenario's workflow in this directory (tool steps only, so no model is needed),
or `lmflow tools` for a scenario that only checks the handshake. lmflow's exit code is this
script's exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
HANDSHAKE_ONLY = {"initialize"}


def main() -> int:
    scenario = os.environ["MCP_CONFORMANCE_SCENARIO"]
    url = sys.argv[-1]
    workflow = HERE / f"{scenario}.yaml"
    if not workflow.exists():
        print(f"no lmflow workflow for scenario {scenario!r} in {HERE}", file=sys.stderr)
        return 2
    command = "tools" if scenario in HANDSHAKE_ONLY else "run"
    args = [sys.executable, "-m", "runner", command, str(workflow), "-i", f"url={url}"]
    if command == "run":
        args.append("--no-log")
    return subprocess.run(args, stdin=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    sys.exit(main())

"""lmflow as the client of the MCP conformance suite's client scenarios.

`conformance client --command "python tests/conformance/client.py" --scenario S` starts a
test server for scenario S and runs this script with the server's URL as the last argument
and `MCP_CONFORMANCE_SCENARIO=S`. The script runs lmflow itself, as a user would: `lmflow
run` of the scenario's workflow in this directory (tool steps only, so no model is needed),
or `lmflow tools` for a scenario that only checks the handshake. lmflow's exit code is this
script's exit code.

An OAuth scenario (`auth/...`) is what a person does with a server behind a login: `lmflow
auth server WORKFLOW` once, then `lmflow run`. The "browser" is tests/fixtures/browser.py
(`LMFLOW_BROWSER`): the suite's authorization server grants at once and redirects to
lmflow's loopback listener. Tokens go to a config directory of this script's own. A
scenario whose context (`MCP_CONFORMANCE_CONTEXT`) holds client credentials hands them to
lmflow in environment variables, as CI would; with the client credentials grant there is
no login step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BROWSER = HERE.parent / "fixtures" / "browser.py"
HANDSHAKE_ONLY = {"initialize"}
AUTH_WORKFLOWS = {
    "auth/pre-registration": "auth-pre-registration",
    "auth/client-credentials-basic": "auth-client-credentials",
    "auth/client-credentials-jwt": "auth-client-credentials-jwt",
}
"""OAuth scenarios with a workflow of their own; the others use auth.yaml."""


def main() -> int:
    scenario = os.environ["MCP_CONFORMANCE_SCENARIO"]
    url = sys.argv[-1]
    is_auth = scenario.startswith("auth/")
    name = AUTH_WORKFLOWS.get(scenario, "auth") if is_auth else scenario
    workflow = HERE / f"{name}.yaml"
    if not workflow.exists():
        print(f"no lmflow workflow for scenario {scenario!r} in {HERE}", file=sys.stderr)
        return 2
    inputs = [str(workflow), "-i", f"url={url}"]
    if not is_auth:
        command = "tools" if scenario in HANDSHAKE_ONLY else "run"
        return lmflow([command, *inputs, *(["--no-log"] if command == "run" else [])])
    with tempfile.TemporaryDirectory(prefix="lmflow-conformance-") as config:
        os.environ["XDG_CONFIG_HOME"] = config
        os.environ["LMFLOW_BROWSER"] = f"{sys.executable} {BROWSER}"
        context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
        for key in ("client_id", "client_secret", "private_key_pem"):
            if key in context:
                os.environ[f"CONFORMANCE_{key.upper()}"] = context[key]
        if not name.startswith("auth-client-credentials"):
            logged_in = lmflow(["auth", "server", *inputs])
            if logged_in != 0:
                return logged_in
        return lmflow(["run", *inputs, "--no-log"])


def lmflow(args: list[str]) -> int:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], stdin=subprocess.DEVNULL
    ).returncode


if __name__ == "__main__":
    sys.exit(main())

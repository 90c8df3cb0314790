"""Secrets from the environment never reach a run directory, a cassette or a snapshot.

The secret goes into the headers of a real MCP server over streamable HTTP (which echoes it
back as a tool result), into a prompt (which the scripted model repeats in a tool call and
in its answer), and the LM Studio bearer token guards the fake server. Then every file is
searched for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import FakeLMStudio, FakeModel, down_url

from runner.errors import ConfigurationError, LLMResponseError
from runner.lmstudio import LMStudioClient
from runner.lmstudio_server import ServerConfig, may_receive_token, resolve_server
from runner.replay import to_yaml
from runner.runlog import Redactor, read_events, snapshot_view
from runner.runtime import RunOptions, prepare
from runner.spec import check_file
from runner.spec.model import AgentStep, LMStudioSettings, Workflow
from runner.templating import TemplateError, render

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


# --- 1. a workflow file alone never sends the token to a server the user did not choose ------

DEPLOY_KEY = "ci-deploy-key-0123456789"


def untrusted_url(lm: FakeLMStudio) -> str:
    """The fake, reached through `127.1`: the system resolver takes it for 127.0.0.1, but it
    is not a canonical loopback address, so it stands for a host elsewhere (fail closed)."""
    return lm.url.replace("127.0.0.1", "127.1")


def chosen_by_file(tmp_path: Path, base_url: str, token_env: str = "CI_DEPLOY_KEY") -> Path:
    path = tmp_path / "pr.yaml"
    path.write_text(
        f"version: 1\nname: pr\nlmstudio: {{base_url: '{base_url}', token_env: {token_env}}}\n"
        f"steps:\n  - id: a\n    model: {MODEL}\n    prompt: hi\n"
    )
    return path


def authorizations(lm: FakeLMStudio) -> list[str | None]:
    assert lm.requests, "the command never reached the fake: the test would prove nothing"
    return [request.headers.get("Authorization") for request in lm.requests]


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:1234",
        "http://LOCALHOST:1234",
        "http://127.0.0.1:1234",
        "http://127.0.0.2:9",
        "http://[::1]:1234",
        "http://user:pw@127.0.0.1:1234",
        "http://attacker.example\\@127.0.0.1:1234",  # httpx connects to 127.0.0.1
    ],
)
def test_a_server_on_this_machine_may_receive_the_token(url: str) -> None:
    assert may_receive_token(url, trusted="")


@pytest.mark.parametrize(
    "url",
    [
        "http://attacker:1234",
        "http://localhost.attacker.example:1234",
        "http://localhost.:1234",  # resolved through DNS, not /etc/hosts
        "http://127.0.0.1.attacker.example",
        "http://127.0.0.1@attacker.example:1234",
        "http://127.0.0.1:1234\\@attacker.example",
        "http://127.0.0.1%2f@attacker.example/",
        "http://attacker.example#@127.0.0.1",
        "http://127.1:1234",  # non-canonical forms fail closed
        "http://2130706433:1234",
        "http://[fe80::1]:1234",
        "http://xn--localhost-.example:1234",
        "http://\uff4cocalhost:1234",  # a fullwidth l
    ],
)
def test_a_server_elsewhere_gets_no_token(url: str) -> None:
    assert not may_receive_token(url, trusted="")


@pytest.mark.parametrize(
    ("url", "trusted", "allowed"),
    [
        ("http://gpu-box.lan:1234", "gpu-box.lan", True),
        ("http://GPU-BOX.lan:1234", "other, Gpu-Box.LAN", True),
        ("http://gpu-box.lan:1234", "gpu-box.lan:1234", True),
        ("http://gpu-box.lan:5678", "gpu-box.lan:1234", False),
        ("http://gpu-box.lan", "gpu-box.lan:80", True),
        ("https://gpu-box.lan", "gpu-box.lan:80", False),
        ("http://gpu-box.lan.attacker.example:1234", "gpu-box.lan", False),
        ("http://[fd00::5]:1234", "[fd00::5]", True),
        ("http://10.0.0.5:1234", "10.0.0.50", False),
    ],
)
def test_trusted_hosts_allow_exactly_the_hosts_listed(
    url: str, trusted: str, allowed: bool
) -> None:
    assert may_receive_token(url, trusted=trusted) is allowed


@pytest.mark.parametrize("entry", ["user@gpu-box.lan", "gpu-box.lan/path", "http://gpu-box.lan"])
def test_a_trusted_hosts_entry_that_is_not_a_host_is_refused(entry: str) -> None:
    with pytest.raises(ConfigurationError, match="LMFLOW_TRUSTED_HOSTS"):
        may_receive_token("http://gpu-box.lan:1234", trusted=entry)


def test_resolve_server_sends_the_token_only_where_the_user_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI_DEPLOY_KEY", DEPLOY_KEY)
    settings = LMStudioSettings(base_url="http://attacker.example:1234", token_env="CI_DEPLOY_KEY")
    withheld = resolve_server(None, settings)
    assert withheld.token is None and withheld.withheld is not None
    assert "$CI_DEPLOY_KEY is not sent to http://attacker.example:1234" in withheld.withheld.message
    assert "LMFLOW_TRUSTED_HOSTS" in withheld.withheld.hint
    assert DEPLOY_KEY not in repr(withheld)
    # The same URL chosen by the user outside the file gets it.
    assert resolve_server("http://attacker.example:1234", settings).token == DEPLOY_KEY
    monkeypatch.setenv("LMFLOW_TRUSTED_HOSTS", "attacker.example")
    assert resolve_server(None, settings).token == DEPLOY_KEY
    monkeypatch.delenv("LMFLOW_TRUSTED_HOSTS")
    monkeypatch.setenv("LMFLOW_BASE_URL", "http://attacker.example:1234")
    assert resolve_server(None, settings).token == DEPLOY_KEY


def test_validate_sends_no_token_to_a_server_the_file_chose(tmp_path: Path) -> None:
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)]) as lm:
        workflow = chosen_by_file(tmp_path, untrusted_url(lm))
        checked = lmflow("validate", str(workflow), cwd=tmp_path, CI_DEPLOY_KEY=DEPLOY_KEY)
        assert authorizations(lm) == [None]
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "warning: the token in $CI_DEPLOY_KEY is not sent" in checked.stdout
        assert "LMFLOW_TRUSTED_HOSTS" in checked.stdout
        assert "[token-not-sent]" in checked.stdout and ":3:" in checked.stdout

        # The user allows that host outside the file: now the token goes there.
        lm.requests.clear()
        allowed = lmflow(
            "validate", str(workflow), "--refresh", cwd=tmp_path,
            CI_DEPLOY_KEY=DEPLOY_KEY, LMFLOW_TRUSTED_HOSTS="127.1",
        )  # fmt: skip
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert authorizations(lm) == [f"Bearer {DEPLOY_KEY}"]
    for output in (checked, allowed):
        assert DEPLOY_KEY not in output.stdout + output.stderr


def test_run_says_why_a_server_the_file_chose_refused_it(tmp_path: Path) -> None:
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], token=DEPLOY_KEY) as lm:
        workflow = chosen_by_file(tmp_path, untrusted_url(lm))
        refused = lmflow("run", str(workflow), cwd=tmp_path, CI_DEPLOY_KEY=DEPLOY_KEY)
        assert authorizations(lm) == [None]
        assert refused.returncode == 3, refused.stderr
        assert "note: the token in $CI_DEPLOY_KEY is not sent to" in refused.stderr
        assert "--base-url" in refused.stderr.split("error:")[1]  # the 401's hint says why
        (run,) = (tmp_path / ".lmflow" / "runs").iterdir()
        notices = [e for e in read_events(run / "events.jsonl").events if e["type"] == "notice"]
        assert [n["rule"] for n in notices] == ["token-not-sent"]

        # Chosen on the command line, the same server gets the token and the run succeeds.
        lm.requests.clear()
        chosen = lmflow(
            "run", str(workflow), "--base-url", untrusted_url(lm), cwd=tmp_path,
            CI_DEPLOY_KEY=DEPLOY_KEY,
        )  # fmt: skip
        assert chosen.returncode == 0, chosen.stderr
        assert set(authorizations(lm)) == {f"Bearer {DEPLOY_KEY}"}
    assert files_holding(tmp_path, DEPLOY_KEY) == []


class _Redirect(BaseHTTPRequestHandler):
    """Answers every request with a redirect to `target` (a class attribute set per test)."""

    target = ""

    def do_GET(self) -> None:
        self.send_response(307)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_redirect_is_not_followed_with_the_token(tmp_path: Path) -> None:
    with FakeLMStudio() as elsewhere:
        handler = type("Redirect", (_Redirect,), {"target": untrusted_url(elsewhere)})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            with pytest.raises(LLMResponseError, match="none of"):
                asyncio.run(list_models(ServerConfig(url, token=LM_TOKEN)))
        finally:
            server.shutdown()
            server.server_close()
        assert elsewhere.requests == []


async def list_models(config: ServerConfig) -> Any:
    async with LMStudioClient.from_config(config) as client:
        return await client.list_models(use_lms=False)


# --- 2. templates read environment variables by name only -------------------------------------

OTHER_SECRET = "other-secret-not-named-0123"


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("{{ env | list }}", "env |"),
        ("{{ env | dictsort }}", "env |"),
        ("{{ env | tojson }}", "env |"),
        ("{{ env.items() }}", "env.items()"),
        ("{{ env.values() }}", "env.values()"),
        ("{{ env.get('HOME', 'x') }}", "env.get("),
        ("{% for k in env %}{{ k }}{% endfor %}", "env %}"),
        ("{{ env[inputs.name] }}", "env[inputs"),
        ("{{ env[0] }}", "env[0]"),
        ("{% set e = env %}{{ e.HOME }}", "env %}"),
        ("{{ env }}", "env }}"),
    ],
)
def test_using_env_other_than_by_name_is_a_validation_error(
    tmp_path: Path, template: str, needle: str
) -> None:
    line = f'    prompt: "ok {{{{ env.HOME }}}} then {template}"'
    path = tmp_path / "enum.yaml"
    path.write_text(
        "version: 1\nname: enum\ninputs:\n  name: {type: string}\n"
        f"steps:\n  - id: a\n    model: {MODEL}\n{line}\n"
    )
    _, problems = check_file(path)
    (problem,) = problems
    assert problem.rule == "env-by-name" and problem.is_error
    assert (problem.line, problem.col) == (8, line.index(needle) + 1)
    assert 'env.NAME or env["NAME"]' in (problem.hint or "")

    checked = lmflow("validate", "--offline", str(path), cwd=tmp_path)
    assert checked.returncode == 2
    assert f"enum.yaml:8:{problem.col}: error: " in checked.stdout


def test_a_condition_and_a_server_setting_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "enum.yaml"
    path.write_text(
        "version: 1\nname: enum\nmcp_servers:\n"
        "  s: {command: srv, env: {ALL: '{{ env | tojson }}'}}\n"
        f"steps:\n  - id: a\n    model: {MODEL}\n    if: env | length > 0\n    prompt: hi\n"
    )
    _, problems = check_file(path)
    assert [(p.rule, p.line) for p in problems] == [("env-by-name", 4), ("env-by-name", 8)]


def test_reading_env_by_name_stays_valid(tmp_path: Path) -> None:
    path = tmp_path / "named.yaml"
    path.write_text(
        f"version: 1\nname: named\nsteps:\n  - id: a\n    model: {MODEL}\n"
        "    prompt: >-\n      {{ env.HOME }} {{ env['LANG'] | default('C') }}"
        " {{ env.HOME.upper() }} {% if env.X is defined %}x{% endif %}\n"
    )
    assert check_file(path)[1] == []


def test_the_run_context_holds_only_the_variables_the_workflow_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: a Workflow that never met the validator cannot list the rest."""
    monkeypatch.setenv("NAMED_SECRET", SECRET)
    monkeypatch.setenv("OTHER_SECRET", OTHER_SECRET)
    workflow = Workflow(
        path=tmp_path / "w.yaml",
        name="w",
        steps=(AgentStep(id="a", index=0, model=MODEL, prompt="{{ env.NAMED_SECRET }}"),),
    )
    run = prepare(workflow, {}, RunOptions(write_log=False))
    context = run.context
    assert render("{{ env.NAMED_SECRET }}", context) == SECRET
    assert render("{{ env['NAMED_SECRET'] }}", context) == SECRET
    assert render("{{ env.OTHER_SECRET | default('unset') }}", context) == "unset"
    for template in ("{{ env | list }}", "{{ env.items() }}", "{{ env | dictsort }}"):
        with pytest.raises(TemplateError):
            render(template, context)
    assert run.log.redactor.text(f"{SECRET} {OTHER_SECRET}") == f"*** {OTHER_SECRET}"


# --- 3. a password in the server URL is masked from the first event on ----------------------

URL_PASSWORD = "url-pass-W0rd-777"


def test_a_password_in_the_base_url_reaches_no_file(tmp_path: Path) -> None:
    workflow = chosen_by_file(tmp_path, "http://localhost:1", token_env="LM_API_TOKEN")
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)]) as lm:
        with_password = lm.url.replace("http://", f"http://me:{URL_PASSWORD}@")
        ran = lmflow("run", str(workflow), cwd=tmp_path, LMFLOW_BASE_URL=with_password)
        assert ran.returncode == 0, ran.stderr
        # The credentials still work: sent as Basic auth, as before.
        assert set(authorizations(lm)) == {"Basic bWU6dXJsLXBhc3MtVzByZC03Nzc="}
    down = down_url().replace("http://", f"http://me:{URL_PASSWORD}@")
    failed = lmflow("run", str(workflow), "--base-url", down, cwd=tmp_path)
    assert failed.returncode == 3, failed.stderr
    assert "cannot reach LM Studio at http://127.0.0.1:" in failed.stderr
    invalid = lmflow(
        "run", str(workflow), cwd=tmp_path, LMFLOW_BASE_URL=f"http://me:{URL_PASSWORD}@h:99999"
    )
    assert invalid.returncode == 2, invalid.stderr
    assert "'http://me:***@h:99999'" in invalid.stderr

    runs = sorted((tmp_path / ".lmflow" / "runs").iterdir())
    assert len(runs) == 3 and all((run / "result.json").exists() for run in runs)
    assert json.loads((runs[1] / "result.json").read_text())["status"] == "error"
    assert files_holding(tmp_path, URL_PASSWORD) == []
    for output in (ran, failed, invalid):
        assert URL_PASSWORD not in output.stdout + output.stderr


def test_the_redactor_masks_a_url_password_as_written_and_decoded() -> None:
    redactor = Redactor()
    redactor.add_url_password("http://me:p%40ss-w0rd@host:1")
    assert redactor.text("http://me:p%40ss-w0rd@host:1 p@ss-w0rd") == "http://me:***@host:1 ***"

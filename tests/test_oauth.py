"""OAuth for remote MCP servers: `lmflow auth`, stored tokens, refresh, client credentials,
and tokens masked everywhere a run writes.

The server is a real process (tests/fixtures/oauth_mcp_server.py: an MCP server with its
own authorization server on one loopback port); lmflow runs as a real process too, with
its config directory in the test's tmp_path and tests/fixtures/browser.py as its browser.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp_support import free_port, wait_for_port

from runner.mcp_oauth import BROWSER_VARIABLE, LoginFailed, LoopbackLogin, token_path
from runner.runlog import MASK

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OAUTH_SERVER = FIXTURES / "oauth_mcp_server.py"
BROWSER = FIXTURES / "browser.py"
CLIENT_ID = "ci-client"
CLIENT_SECRET = "ci-secret-0123456789abcdef"


class OAuthServer:
    """The fixture server's URL and the token requests it answered (its journal)."""

    def __init__(self, url: str, journal: Path) -> None:
        self.url = url
        self.journal = journal

    def grants(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines()]


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lmflow's config directory (its tokens) in the test's tmp_path, for lmflow and the
    test alike."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def oauth_server(tmp_path: Path) -> Iterator[OAuthServer]:
    port = free_port()
    journal = tmp_path / "grants.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            str(OAUTH_SERVER),
            "--port",
            str(port),
            "--journal",
            str(journal),
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, process, "OAuth fixture server")
        yield OAuthServer(f"http://127.0.0.1:{port}/mcp", journal)
    finally:
        process.kill()
        process.communicate()


def workflow(tmp_path: Path, oauth: str = "true") -> Path:
    path = tmp_path / "remote.yaml"
    path.write_text(
        "version: 1\n"
        "name: remote\n"
        "inputs:\n"
        "  url: {type: string}\n"
        "mcp_servers:\n"
        f'  remote: {{url: "{{{{ inputs.url }}}}", oauth: {oauth}}}\n'
        "steps:\n"
        "  - {id: who, tool: remote.whoami}\n"
    )
    return path


def lmflow(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`lmflow ARGS` in tmp_path, tests/fixtures/browser.py its browser; umask 0, so
    what a file's mode is comes from lmflow alone."""
    environment = {
        **os.environ,
        BROWSER_VARIABLE: f"{sys.executable} {BROWSER}",
        "LOGIN_BROWSER_LOG": str(tmp_path / "browser.log"),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=tmp_path,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0),
    )


def log_in(tmp_path: Path, server: OAuthServer) -> Path:
    """`lmflow auth remote WORKFLOW`, which must succeed; the token file."""
    done = lmflow(tmp_path, "auth", "remote", str(workflow(tmp_path)), "-i", f"url={server.url}")
    assert done.returncode == 0, done.stderr
    return token_path(server.url)


def everything_written(tmp_path: Path) -> str:
    """Every file a run left in its runs directory, as one text."""
    runs = tmp_path / ".lmflow" / "runs"
    return "\n".join(p.read_text(errors="replace") for p in runs.rglob("*") if p.is_file())


def test_auth_logs_in_and_keeps_the_token_for_the_user_alone(
    tmp_path: Path, oauth_server: OAuthServer
) -> None:
    tokens = log_in(tmp_path, oauth_server)
    (grant,) = oauth_server.grants()
    assert grant["grant"] == "authorization_code"
    assert tokens.is_file() and tokens.parent == tmp_path / "config" / "lmflow" / "tokens"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert stat.S_IMODE(tokens.parent.stat().st_mode) == 0o700
    stored = json.loads(tokens.read_text())
    assert stored["server_url"] == oauth_server.url
    assert stored["tokens"]["access_token"] == grant["access_token"]
    assert stored["client"]["client_id"].startswith("client-")  # registered dynamically
    visited = (tmp_path / "browser.log").read_text().splitlines()
    assert len(visited) == 1 and "code_challenge_method=S256" in visited[0]


def test_a_run_uses_the_stored_token_and_masks_it(
    tmp_path: Path, oauth_server: OAuthServer
) -> None:
    log_in(tmp_path, oauth_server)
    (grant,) = oauth_server.grants()
    cassette = tmp_path / "cassette.yaml"
    path = str(workflow(tmp_path))
    done = lmflow(tmp_path, "run", path, "-i", f"url={oauth_server.url}", "--record", str(cassette))
    assert done.returncode == 0, done.stderr
    assert len(oauth_server.grants()) == 1  # no second login
    written = everything_written(tmp_path) + cassette.read_text()
    assert f"you are {MASK}" in cassette.read_text()  # the tool's answer, token masked
    assert f"you are {MASK}" in everything_written(tmp_path)
    assert grant["access_token"] not in written + done.stdout + done.stderr


def test_a_run_refreshes_an_expired_token(tmp_path: Path, oauth_server: OAuthServer) -> None:
    tokens = log_in(tmp_path, oauth_server)
    stored = json.loads(tokens.read_text())
    tokens.write_text(json.dumps({**stored, "expires_at": 1.0}))  # long expired
    done = lmflow(tmp_path, "run", str(workflow(tmp_path)), "-i", f"url={oauth_server.url}")
    assert done.returncode == 0, done.stderr
    _, refreshed = oauth_server.grants()
    assert refreshed["grant"] == "refresh_token"
    assert json.loads(tokens.read_text())["tokens"]["access_token"] == refreshed["access_token"]
    assert refreshed["access_token"] not in everything_written(tmp_path)
    assert len((tmp_path / "browser.log").read_text().splitlines()) == 1  # no new login


def test_a_run_without_a_token_fails_at_once_with_the_fix(
    tmp_path: Path, oauth_server: OAuthServer
) -> None:
    path = workflow(tmp_path)
    done = lmflow(tmp_path, "run", str(path), "-i", f"url={oauth_server.url}")
    assert done.returncode == 3
    assert "needs an OAuth login and no token is stored" in done.stderr
    assert f"run `lmflow auth remote {path}` once" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "browser.log").exists()  # no browser, no waiting
    assert oauth_server.grants() == []


def test_a_refused_refresh_fails_the_run_with_the_fix(
    tmp_path: Path, oauth_server: OAuthServer
) -> None:
    tokens = log_in(tmp_path, oauth_server)
    stored = json.loads(tokens.read_text())
    revoked = {
        "access_token": "revoked-access-0123456789",
        "refresh_token": "revoked-refresh-01234",
    }
    tokens.write_text(json.dumps({**stored, "tokens": revoked, "expires_at": 1.0}))
    path = workflow(tmp_path)
    done = lmflow(tmp_path, "run", str(path), "-i", f"url={oauth_server.url}")
    assert done.returncode == 3
    assert "is no longer accepted and could not be refreshed" in done.stderr
    assert f"run `lmflow auth remote {path}` once" in done.stderr
    assert "revoked-" not in done.stderr  # the stored tokens are secrets too
    assert len((tmp_path / "browser.log").read_text().splitlines()) == 1  # auth's, no other


def test_auth_by_url_alone_serves_a_workflow_that_names_the_server(
    tmp_path: Path, oauth_server: OAuthServer
) -> None:
    done = lmflow(tmp_path, "auth", oauth_server.url)
    assert done.returncode == 0, done.stderr
    assert str(token_path(oauth_server.url)) in done.stdout
    ran = lmflow(tmp_path, "run", str(workflow(tmp_path)), "-i", f"url={oauth_server.url}")
    assert ran.returncode == 0, ran.stderr
    assert [grant["grant"] for grant in oauth_server.grants()] == ["authorization_code"]


def test_client_credentials_come_from_the_environment(
    tmp_path: Path, oauth_server: OAuthServer
) -> None:
    oauth = "{grant: client_credentials, client_id_env: CI_ID, client_secret_env: CI_SECRET}"
    path = workflow(tmp_path, oauth)
    env = {"CI_ID": CLIENT_ID, "CI_SECRET": CLIENT_SECRET}
    done = lmflow(tmp_path, "run", str(path), "-i", f"url={oauth_server.url}", env=env)
    assert done.returncode == 0, done.stderr
    (grant,) = oauth_server.grants()
    assert grant["grant"] == "client_credentials"
    written = everything_written(tmp_path)
    assert f"you are {MASK}" in written
    assert grant["access_token"] not in written
    assert CLIENT_SECRET not in written + done.stdout + done.stderr
    assert not (tmp_path / "browser.log").exists()


def test_client_credentials_without_their_variable_say_which(
    tmp_path: Path, oauth_server: OAuthServer
) -> None:
    oauth = "{grant: client_credentials, client_id_env: CI_ID, client_secret_env: CI_SECRET}"
    done = lmflow(
        tmp_path,
        "run",
        str(workflow(tmp_path, oauth)),
        "-i",
        f"url={oauth_server.url}",
        env={"CI_ID": CLIENT_ID},
    )
    assert done.returncode == 3
    assert "$CI_SECRET, which is not set" in done.stderr
    assert "export CI_SECRET" in done.stderr


def test_auth_without_a_browser_shows_the_url_and_gives_up_in_time(
    tmp_path: Path, oauth_server: OAuthServer
) -> None:
    path = workflow(tmp_path, "{login_timeout: 1}")
    no_browser = {BROWSER_VARIABLE: str(tmp_path / "no-such-browser")}
    done = lmflow(
        tmp_path, "auth", "remote", str(path), "-i", f"url={oauth_server.url}", env=no_browser
    )
    assert done.returncode == 3
    assert "Open this URL in a browser on this machine to log in to remote:" in done.stderr
    assert f"{oauth_server.url.removesuffix('/mcp')}/authorize?" in done.stderr
    assert "no browser came back" in done.stderr and "login_timeout" in done.stderr
    assert "Traceback" not in done.stderr
    assert oauth_server.grants() == []


def test_auth_refuses_a_server_without_oauth_settings(tmp_path: Path) -> None:
    path = workflow(tmp_path, "false")
    done = lmflow(tmp_path, "auth", "remote", str(path), "-i", "url=http://127.0.0.1:9/mcp")
    assert done.returncode == 2
    assert "has no `oauth:` settings" in done.stderr
    assert "oauth: true" in done.stderr


@pytest.mark.anyio
async def test_the_login_listener_waits_for_the_right_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BROWSER_VARIABLE, "true")  # a browser that goes nowhere
    shown: list[tuple[str, bool]] = []
    async with LoopbackLogin(lambda url, opened: shown.append((url, opened)), 60) as login:
        await login.redirect("https://as.example/authorize?state=expected&client_id=x")
        results: list[Any] = []

        async def wait() -> None:
            results.append(await login.callback())

        async with anyio.create_task_group() as group, httpx.AsyncClient() as http:
            group.start_soon(wait)
            wrong = await http.get(f"{login.redirect_uri}?code=stolen&state=forged")
            elsewhere = await http.get(login.redirect_uri.replace("/callback", "/favicon.ico"))
            right = await http.get(f"{login.redirect_uri}?code=good&state=expected")
    assert shown == [("https://as.example/authorize?state=expected&client_id=x", True)]
    assert (wrong.status_code, elsewhere.status_code, right.status_code) == (400, 404, 200)
    assert login.redirect_uri.startswith("http://127.0.0.1:")
    (result,) = results
    assert (result.code, result.state) == ("good", "expected")


@pytest.mark.anyio
async def test_the_login_listener_gives_up_after_its_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BROWSER_VARIABLE, "true")
    async with LoopbackLogin(lambda url, opened: None, timeout=0.2) as login:
        await login.redirect("https://as.example/authorize?state=s")
        with pytest.raises(LoginFailed, match="no browser came back"):
            await login.callback()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("oauth", "rule", "fix"),
    [
        (
            "{grant: client_credentials, client_id_env: CI_ID}",
            "incomplete-oauth-client",
            "client_secret_env: REMOTE_CLIENT_SECRET",
        ),
        (
            "{client_id_env: ID, client_key_env: KEY}",
            "incomplete-oauth-client",
            "add `grant: client_credentials`",
        ),
        (
            "{client_id_env: Zq81kLm2Np4Rs6Tu8Vw0XyAbCd}",
            "literal-secret",
            "client_id_env: REMOTE_CLIENT_ID",
        ),
    ],
)
def test_validate_says_where_oauth_settings_are_wrong_and_how_to_fix_them(
    lmflow_cli: Callable[..., Any], tmp_path: Path, oauth: str, rule: str, fix: str
) -> None:
    done = lmflow_cli("validate", str(workflow(tmp_path, oauth)))
    said = done.stdout + done.stderr
    assert done.exit_code == 2
    assert "remote.yaml:6:" in said
    assert f"[{rule}]" in said
    assert fix in said

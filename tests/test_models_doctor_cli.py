"""`lmflow models` and `lmflow doctor` against the fake LM Studio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes.lmstudio import FakeLMStudio, down_url, install_fake_lms

from runner.cli import main

MODELS = "/api/v1/models"


def lmflow(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process the way the console script does: exit code, out, err."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


# --- lmflow models ---------------------------------------------------------------------------


def test_models_prints_a_table(capsys, fake_lmstudio: FakeLMStudio) -> None:
    code, out, _ = lmflow(capsys, "models", "--base-url", fake_lmstudio.url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "STATE", "CONTEXT", "TOOLS"]
    assert lines[1].split() == ["qwen/qwen3-coder-30b", "llm", "loaded", "8192/262144", "yes"]
    assert lines[3].split() == ["google/gemma-3-270m", "llm", "not-loaded", "32768", "no"]
    assert lines[5].split()[:2] == ["text-embedding-nomic-embed-text-v1.5", "embedding"]
    assert lines[-1] == f"5 models ({fake_lmstudio.url}, native-v1 API)"


def test_models_json(capsys, make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(api="v0")
    code, out, _ = lmflow(capsys, "models", "--json", "--base-url", lm.url)
    assert code == 0
    data = json.loads(out)
    assert (data["server"], data["flavour"]) == (lm.url, "native-v0")
    assert data["models"][0] == {
        "id": "qwen/qwen3-coder-30b",
        "type": "llm",
        "state": "loaded",
        "max_context_length": 262144,
        "loaded_context_length": 8192,
        "tool_use": True,
        "variants": [],
        "quantization": "Q4_K_M",
        "instances": [],
        "activity": None,
        "parallel": None,
    }


def test_models_uses_the_cache_unless_refreshed(
    capsys, fake_lmstudio: FakeLMStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMFLOW_BASE_URL", fake_lmstudio.url)
    lmflow(capsys, "models")
    lmflow(capsys, "models", "--json")
    assert fake_lmstudio.count(MODELS) == 1
    lmflow(capsys, "models", "--refresh")
    assert fake_lmstudio.count(MODELS) == 2
    lmflow(capsys, "models", "--cache-ttl", "0")
    assert fake_lmstudio.count(MODELS) == 3
    monkeypatch.setenv("LMFLOW_MODEL_CACHE_TTL", "0")
    lmflow(capsys, "models")
    assert fake_lmstudio.count(MODELS) == 4


def test_models_with_a_bad_ttl_is_exit_2(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFLOW_MODEL_CACHE_TTL", "a minute")
    code, _, err = lmflow(capsys, "models", "--base-url", down_url())
    assert code == 2
    assert "LMFLOW_MODEL_CACHE_TTL must be a number of seconds" in err


def test_models_needs_the_token(
    capsys, make_fake_lmstudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = make_fake_lmstudio(token="tok-999")
    code, _, err = lmflow(capsys, "models", "--base-url", lm.url)
    assert code == 3
    assert "set $LM_API_TOKEN" in err
    monkeypatch.setenv("LM_API_TOKEN", "tok-999")
    code, out, _ = lmflow(capsys, "models", "--base-url", lm.url)
    assert code == 0
    assert "qwen/qwen3-coder-30b" in out


def test_unreachable_server_is_exit_3_without_a_traceback() -> None:
    url = down_url()
    done = subprocess.run(
        [sys.executable, "-m", "runner", "models", "--base-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert f"error: cannot reach LM Studio at {url}" in done.stderr
    assert "lms server start" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


# --- lmflow doctor ---------------------------------------------------------------------------


def status_lines(out: str) -> dict[str, str]:
    """name -> the status word of each check line."""
    lines = [line.split(maxsplit=2) for line in out.splitlines() if not line.startswith(" ")]
    return {name: status for status, name, *_ in lines}


def test_doctor_all_ok(
    capsys, fake_lmstudio: FakeLMStudio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{install_fake_lms(tmp_path, [])}{os.pathsep}{os.environ['PATH']}")
    lmflow(capsys, "models", "--base-url", fake_lmstudio.url)  # fills the cache
    code, out, _ = lmflow(capsys, "doctor", "--base-url", fake_lmstudio.url)
    assert code == 0
    assert status_lines(out) == {"server": "OK", "auth": "OK", "lms": "OK", "cache": "OK"}
    assert "LM Studio 0.4+ native API (/api/v1); 5 models, 1 loaded" in out
    assert "no token needed" in out
    assert f"lms CLI at {tmp_path / 'lms'}" in out
    assert f"{fake_lmstudio.url} cached " in out
    assert "fresh (TTL 60 s)" in out


@pytest.mark.parametrize(
    ("api", "says"),
    [("v0", "LM Studio 0.3 native API (/api/v0)"), ("openai", "an OpenAI-compatible API only")],
)
def test_doctor_names_the_api_flavour(capsys, make_fake_lmstudio, api: str, says: str) -> None:
    lm = make_fake_lmstudio(api=api)
    code, out, _ = lmflow(capsys, "doctor", "--base-url", lm.url)
    assert code == 0
    assert says in out


def test_doctor_without_lms_warns_but_passes(
    capsys, fake_lmstudio: FakeLMStudio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code, out, _ = lmflow(capsys, "doctor", "--base-url", fake_lmstudio.url)
    assert code == 0
    assert status_lines(out)["lms"] == "WARN"
    assert "fix: install it with" in out
    assert "nothing cached for" in out


def test_doctor_unreachable_server(capsys) -> None:
    url = down_url()
    code, out, _ = lmflow(capsys, "doctor", "--base-url", url)
    assert code == 3
    assert status_lines(out)["server"] == "FAIL"
    assert f"cannot reach LM Studio at {url}" in out
    assert "fix: start LM Studio's server with `lms server start`" in out


def test_doctor_auth(capsys, make_fake_lmstudio, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = make_fake_lmstudio(token="tok-777")
    code, out, _ = lmflow(capsys, "doctor", "--base-url", lm.url)
    assert code == 3
    assert status_lines(out)["server"] == "OK"
    assert status_lines(out)["auth"] == "FAIL"
    assert "set $LM_API_TOKEN" in out
    monkeypatch.setenv("LM_API_TOKEN", "wrong-tok-555")
    code, out, _ = lmflow(capsys, "doctor", "--base-url", lm.url)
    assert (code, status_lines(out)["auth"]) == (3, "FAIL")
    assert "$LM_API_TOKEN was rejected" in out
    assert "wrong-tok-555" not in out
    monkeypatch.setenv("LM_API_TOKEN", "tok-777")
    code, out, _ = lmflow(capsys, "doctor", "--base-url", lm.url)
    assert (code, status_lines(out)["auth"]) == (0, "OK")
    assert "token from $LM_API_TOKEN accepted" in out
    assert "tok-777" not in out


def test_doctor_warns_about_an_unusable_cache_but_passes(
    capsys, fake_lmstudio: FakeLMStudio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache must never be the reason a command fails: every command works without it.
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LMFLOW_CACHE_DIR", str(blocker))
    code, out, _ = lmflow(capsys, "doctor", "--base-url", fake_lmstudio.url)
    assert status_lines(out)["cache"] == "WARN"
    assert code == 0
    assert "working without it" in out
    assert "fix: set LMFLOW_CACHE_DIR to a writable directory" in out
    code, out, _ = lmflow(capsys, "models", "--base-url", fake_lmstudio.url)
    assert code == 0
    assert "qwen/qwen3-coder-30b" in out


# --- lmflow validate runs the model check (runner.preflight.check_workflows_online) ------

WORKFLOW = """\
version: 1
steps:
  - id: survey
    model: qwen/qwen3-coder-3b
    prompt: hi
  - id: small
    model: mistralai/magistral-small-2509
    prompt: hi
"""


def test_validate_checks_models_against_the_server(
    capsys, fake_lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(WORKFLOW)
    code, out, _ = lmflow(capsys, "validate", str(path), "--base-url", fake_lmstudio.url)
    assert code == 3
    assert (
        f"{path}:4:12: error: model 'qwen/qwen3-coder-3b' is not on {fake_lmstudio.url}; "
        "did you mean 'qwen/qwen3-coder-30b'? [model-not-found]"
    ) in out
    assert f"{path}:7:12: warning: model 'mistralai/magistral-small-2509' is not loaded" in out
    code, _, _ = lmflow(capsys, "validate", str(path), "--offline", "--base-url", down_url())
    assert code == 0
    assert fake_lmstudio.count(MODELS) == 1

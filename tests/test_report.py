"""`lmflow report`: the HTML page of a run, rendered by headless Chromium (Debian's
`chromium`, which .ci/run installs) and checked by what the page shows."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import FakeLMStudio
from mcp_support import fixture_server_entry

from lmflow_runner import RunOptions, WorkflowResult, run_workflow_sync
from lmflow_runner.cli import main
from lmflow_runner.report import render_report

MODEL = "qwen/qwen3-coder-30b"
SECRET = "s3cr3t-VALUE-42"
HOSTILE = (
    "<script>document.title='PWNED'</script>"
    "<img src=x onerror=\"document.title='PWNED'\"> the key is " + SECRET + " & done"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed here (apt-get install chromium; .ci/run does)",
)


def answer(request: dict[str, Any]) -> Any:
    """The fake model: concurrent steps each get their own answer, whatever their order."""
    messages = request["messages"]
    text = " ".join(str(m.get("content")) for m in messages if m["role"] == "user")
    if messages[-1]["role"] == "tool":
        return HOSTILE
    if "echo it" in text:
        return [("echo", {"text": "<b>not bold</b>"})]
    if "right side" in text:
        return "right answer"
    return "the end"


@pytest.fixture
def hostile_run(
    tmp_path: Path, process_tag: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkflowResult]:
    """A real run: two steps at the same time (one calls a tool of a real MCP server and
    answers with markup and a secret), then a third step."""
    monkeypatch.setenv("LMFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LMFLOW_TEST_SECRET", SECRET)
    monkeypatch.delenv("LMFLOW_BASE_URL", raising=False)
    path = tmp_path / "hostile.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            name: hostile
            defaults: {{model: {MODEL}}}
            mcp_servers:
              fx: {fixture_server_entry(process_tag)}
            steps:
              - id: left
                name: Left side
                mcp: [fx]
                tools: [echo]
                prompt: "With {{{{ env.LMFLOW_TEST_SECRET }}}}, echo it."
              - id: right
                name: Right side
                prompt: the right side, please
              - id: last
                prompt: "{{{{ steps.left.output }}}} {{{{ steps.right.output }}}}"
            outputs:
              hostile: "{{{{ steps.left.output }}}}"
            """
        )
    )
    with FakeLMStudio(script=[answer] * 4, chat_delay=0.5) as lm:
        result = run_workflow_sync(
            path, {}, RunOptions(base_url=lm.url, runs_dir=tmp_path / "runs")
        )
    assert result.status == "succeeded", result.error
    yield result


def render_in_chromium(page: Path, work: Path) -> dict[str, Any]:
    """Open `page` in headless Chromium inside a frame, and return what it shows: its title,
    its visible text with every <details> folded and unfolded, and where each time-line bar
    is drawn. The page itself runs no script (its CSP forbids it); the frame's parent does
    the reading."""
    reader = work / "reader.html"
    reader.write_text(
        textwrap.dedent(
            f"""\
            <!doctype html><html><body>
            <iframe id="page" src="{page.as_uri()}" style="width:1200px;height:900px"></iframe>
            <pre id="out"></pre>
            <script>
            document.getElementById("page").onload = () => {{
              const doc = document.getElementById("page").contentDocument;
              const folded = doc.body.innerText;
              const bars = [...doc.querySelectorAll(".lane")].map(lane => {{
                const bar = lane.querySelector(".bar");
                const box = bar ? bar.getBoundingClientRect() : null;
                return {{step: lane.dataset.step,
                         box: box && {{left: box.left, right: box.right, top: box.top}}}};
              }});
              doc.querySelectorAll("details").forEach(d => d.open = true);
              document.getElementById("out").textContent = JSON.stringify({{
                title: doc.title, folded, unfolded: doc.body.innerText, bars,
                scripts: doc.querySelectorAll("script").length,
                images: doc.querySelectorAll("img").length,
              }});
            }};
            </script></body></html>
            """
        )
    )
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            f"--user-data-dir={work / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            reader.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    start = done.stdout.index('<pre id="out">') + len('<pre id="out">')
    shown = done.stdout[start : done.stdout.index("</pre>", start)]
    return json.loads(html.unescape(shown))


@needs_chromium
def test_the_report_shows_the_run_and_runs_nothing_it_shows(
    hostile_run: WorkflowResult, tmp_path: Path
) -> None:
    assert hostile_run.run_dir is not None
    page = tmp_path / "page.html"
    with pytest.raises(SystemExit) as ended:
        main(["report", hostile_run.run_id, "--runs-dir", str(tmp_path / "runs"), "-o", str(page)])
    assert ended.value.code == 0
    shown = render_in_chromium(page, tmp_path)

    # The hostile answer is text on the page, not markup: nothing ran, nothing was loaded.
    assert shown["title"] == f"hostile · run {hostile_run.run_id} · succeeded"
    assert shown["scripts"] == 0 and shown["images"] == 0
    assert "<script>document.title='PWNED'</script>" in shown["folded"]  # the output, as text
    assert "<b>not bold</b>" in shown["unfolded"]  # the tool argument, as text
    # The secret stays masked, wherever it went.
    assert SECRET not in page.read_text()
    assert "the key is *** & done" in shown["folded"]

    # Each step with its model, rounds, tool calls and tokens.
    text = shown["folded"]
    for step in ("left · Left side", "right · Right side", "last"):
        assert step in text
    assert text.count(MODEL) >= 3
    assert "rounds\n2" in text.replace("\t", "\n")  # left: a tool call, then its answer

    # Tool calls are folded: the result shows only once the <details> is opened.
    assert "echo" in shown["folded"]
    assert "arguments" not in shown["folded"]
    assert "arguments" in shown["unfolded"] and "result" in shown["unfolded"]

    # The time line: left and right ran at the same time (their bars overlap in time, in
    # lanes of their own); last ran after both.
    bars = {bar["step"]: bar["box"] for bar in shown["bars"]}
    left, right, last = bars["left"], bars["right"], bars["last"]
    assert left["left"] < right["right"] and right["left"] < left["right"]
    assert left["top"] != right["top"]
    assert last["left"] >= max(left["right"], right["right"]) - 2


def test_the_page_is_self_contained_and_escaped(hostile_run: WorkflowResult) -> None:
    assert hostile_run.run_dir is not None
    page = render_report(hostile_run.run_dir)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "default-src 'none'" in page  # and a browser would refuse them anyway
    assert "&lt;script&gt;document.title=&#39;PWNED&#39;&lt;/script&gt;" in page
    assert SECRET not in page


def test_report_of_an_unknown_run_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit) as ended:
        main(["report", "last", "--runs-dir", str(tmp_path / "runs")])
    assert ended.value.code == 2
    assert "no runs under" in capsys.readouterr().err

"""`lmflow batch` (runner/batch*.py, docs/batch.md) against real loopback fake hosts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import FakeLMStudio, FakeModel, down_url
from mcp_support import fixture_server_entry, wait_until_gone

MODEL = "qwen/qwen3-coder-30b"  # loaded on the fake by default
WORKFLOW = f"""version: 1
name: greet
defaults: {{model: {MODEL}}}
inputs:
  name: {{type: string}}
  times: {{type: integer, default: 1}}
steps:
  - id: hello
    prompt: "Greet {{{{ inputs.name }}}} {{{{ inputs.times }}}} times"
outputs:
  said: "{{{{ steps.hello.output }}}}"
"""


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    path = tmp_path / "greet.yaml"
    path.write_text(WORKFLOW)
    return path


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_out(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def greeted(server: FakeLMStudio) -> Counter[str]:
    """How many chat requests the fake got for each row's name."""
    names: Counter[str] = Counter()
    for body in server.chat_requests:
        text = body["messages"][-1]["content"]
        names[text.split()[1]] += 1
    return names


def test_rows_spread_over_two_hosts_within_their_slots(
    tmp_path: Path, workflow: Path, make_fake_lmstudio: Callable[..., FakeLMStudio], lmflow_cli
) -> None:
    first, second = make_fake_lmstudio(chat_delay=0.2), make_fake_lmstudio(chat_delay=0.2)
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": f"n{i}"} for i in range(12)])
    out = tmp_path / "out.jsonl"
    outcome = lmflow_cli(
        "batch", str(workflow), str(rows), "-o", str(out), "--no-log", "-q",
        "--base-url", first.url, "--base-url", second.url, "--slots", "2",
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.stderr
    records = read_out(out)
    assert sorted(r["line"] for r in records) == list(range(1, 13))
    assert {r["status"] for r in records} == {"succeeded"}
    by_line = {r["line"]: r for r in records}
    assert by_line[3]["outputs"] == {"said": "echo: Greet n2 1 times"}
    assert by_line[3]["inputs"] == {"name": "n2", "times": 1}
    assert by_line[3]["usage"]["completion_tokens"] > 0 and by_line[3]["run_id"]
    assert greeted(first) + greeted(second) == Counter(f"n{i}" for i in range(12))
    served = Counter(r["host"] for r in records)
    assert served[first.url] == len(first.chat_requests) > 0
    assert served[second.url] == len(second.chat_requests) > 0
    assert first.peak_in_flight <= 2 and second.peak_in_flight <= 2
    assert max(first.peak_in_flight, second.peak_in_flight) == 2  # rows did overlap


def test_a_bad_row_fails_alone_with_its_line_before_any_row_runs(
    tmp_path: Path, workflow: Path, fake_lmstudio: FakeLMStudio, lmflow_cli
) -> None:
    rows = write_rows(
        tmp_path / "rows.jsonl",
        [{"name": "ann"}, {"name": "bob", "times": "often"}, "", "[1, 2]", {"times": 2}],
    )
    out = tmp_path / "out.jsonl"
    outcome = lmflow_cli("batch", str(workflow), str(rows), "-o", str(out), "--no-log",
                         "--base-url", fake_lmstudio.url)  # fmt: skip
    assert outcome.exit_code == 1
    by_line = {r["line"]: r for r in read_out(out)}
    assert sorted(by_line) == [1, 2, 4, 5]
    assert by_line[1]["status"] == "succeeded"
    assert by_line[2]["status"] == "invalid"
    assert "'often' is not an integer" in by_line[2]["error"]
    assert by_line[4]["status"] == "invalid" and "JSON object" in by_line[4]["error"]
    assert by_line[5]["status"] == "invalid" and "'name' is required" in by_line[5]["error"]
    assert f"{rows}:2: invalid row" in outcome.stderr
    # Progress (not a terminal: whole lines) and the count per status at the end.
    assert "rows 4/4 done, 3 failed" in outcome.stderr
    assert f"4 rows: 3 invalid, 1 succeeded; results in {out}" in outcome.stderr
    assert greeted(fake_lmstudio) == Counter(["ann"])
    # Bad rows are written while checking, before the first row runs.
    assert [r["line"] for r in read_out(out)][:3] == [2, 4, 5]


def test_csv_rows_with_mapped_columns(
    tmp_path: Path, workflow: Path, fake_lmstudio: FakeLMStudio, lmflow_cli
) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text('who,n,note\nann,3,x\n"bob\nby",,y\ncid,lots,z\n')
    out = tmp_path / "out.jsonl"
    outcome = lmflow_cli("batch", str(workflow), str(rows), "-o", str(out), "--no-log",
                         "--map", "name=who", "--map", "times=n",
                         "--base-url", fake_lmstudio.url)  # fmt: skip
    assert outcome.exit_code == 1
    by_line = {r["line"]: r for r in read_out(out)}
    assert by_line[2]["inputs"] == {"name": "ann", "times": 3}
    assert by_line[3]["inputs"] == {"name": "bob\nby", "times": 1}  # empty cell: the default
    assert by_line[3]["status"] == "succeeded"
    assert by_line[5]["status"] == "invalid" and "'lots' is not an integer" in by_line[5]["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--map", "nope=who"], "no input 'nope'"),
        (["--map", "name"], "is not input=column"),
        (["--map", "name=missing"], "no column 'missing'"),
    ],
)
def test_a_bad_map_is_a_bad_argument(
    tmp_path: Path, workflow: Path, lmflow_cli, args: list[str], message: str
) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("who\nann\n")
    outcome = lmflow_cli("batch", str(workflow), str(rows), "-o", str(tmp_path / "o.jsonl"),
                         *args)  # fmt: skip
    assert outcome.exit_code == 2
    assert message in outcome.stderr
    assert not (tmp_path / "o.jsonl").exists()  # nothing to resume: the batch never started
    assert not (tmp_path / "o.jsonl.journal").exists()


def test_rows_that_are_not_utf8(
    tmp_path: Path, workflow: Path, fake_lmstudio: FakeLMStudio, lmflow_cli
) -> None:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_bytes(b'{"name": "ann"}\n{"name": "b\xff"}\n')
    out = tmp_path / "out.jsonl"
    args = ("-o", str(out), "--no-log", "--base-url", fake_lmstudio.url)
    outcome = lmflow_cli("batch", str(workflow), str(jsonl), *args)
    assert outcome.exit_code == 1  # the bad line fails alone
    by_line = {r["line"]: r for r in read_out(out)}
    assert by_line[1]["status"] == "succeeded"
    assert by_line[2]["status"] == "invalid" and "not UTF-8" in by_line[2]["error"]

    csv_rows = tmp_path / "rows.csv"
    csv_rows.write_bytes(b"name\nann\nb\xff\n")
    other = tmp_path / "other.jsonl"
    outcome = lmflow_cli("batch", str(workflow), str(csv_rows), "-o", str(other))
    assert outcome.exit_code == 2
    assert f"{csv_rows}:3: not UTF-8 text (byte 2 of the line)" in outcome.stderr
    assert not other.exists()


def test_a_host_that_is_down_leaves_the_rotation_and_its_rows_run_elsewhere(
    tmp_path: Path, workflow: Path, fake_lmstudio: FakeLMStudio, lmflow_cli
) -> None:
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": f"n{i}"} for i in range(6)])
    out = tmp_path / "out.jsonl"
    dead = down_url()
    outcome = lmflow_cli("batch", str(workflow), str(rows), "-o", str(out), "--no-log",
                         "--base-url", dead, "--base-url", fake_lmstudio.url)  # fmt: skip
    assert outcome.exit_code == 0, outcome.stderr
    records = read_out(out)
    assert len(records) == 6 and {r["host"] for r in records} == {fake_lmstudio.url}
    assert greeted(fake_lmstudio) == Counter(f"n{i}" for i in range(6))


def test_a_host_stopped_mid_batch_leaves_the_rotation_and_no_row_is_lost(
    tmp_path: Path, workflow: Path, make_fake_lmstudio: Callable[..., FakeLMStudio], lmflow_cli
) -> None:
    doomed, steady = make_fake_lmstudio(chat_delay=0.3), make_fake_lmstudio(chat_delay=0.3)
    doomed_url = doomed.url
    names = [f"n{i}" for i in range(10)]
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": name} for name in names])
    out = tmp_path / "out.jsonl"

    def stop_when_busy() -> None:
        # Both of its slots are answering: those two rows finish, the next ones find it gone.
        while len(doomed.chat_requests) < 2:
            time.sleep(0.01)
        doomed.stop()

    stopper = threading.Thread(target=stop_when_busy, daemon=True)
    stopper.start()
    outcome = lmflow_cli("batch", str(workflow), str(rows), "-o", str(out), "--no-log",
                         "--base-url", doomed.url, "--base-url", steady.url,
                         "--slots", "2")  # fmt: skip
    stopper.join(timeout=30)
    assert outcome.exit_code == 0, outcome.stderr
    assert f"host {doomed_url} taken out of the rotation" in outcome.stderr
    records = read_out(out)
    assert sorted(r["line"] for r in records) == list(range(1, 11))
    served = Counter(r["host"] for r in records)
    # Every row it answered before it stopped is kept; every other row ran on the other host.
    assert served[doomed_url] == len(doomed.chat_requests) >= 2
    assert served[steady.url] == len(steady.chat_requests) == 10 - served[doomed_url]
    assert greeted(doomed) + greeted(steady) == Counter(names)


def test_no_host_left_stops_the_batch_and_resume_runs_its_rows(
    tmp_path: Path, workflow: Path, fake_lmstudio: FakeLMStudio, lmflow_cli
) -> None:
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": "ann"}, {"name": "bob"}])
    out = tmp_path / "out.jsonl"
    args = ("batch", str(workflow), str(rows), "-o", str(out), "--no-log", "--base-url")
    outcome = lmflow_cli(*args, down_url())
    assert outcome.exit_code == 3
    assert "no LM Studio host is left" in outcome.stderr
    assert out.read_text() == ""
    outcome = lmflow_cli(*args, fake_lmstudio.url, "--resume")
    assert outcome.exit_code == 0, outcome.stderr
    assert sorted(r["line"] for r in read_out(out)) == [1, 2]


def test_resume_refuses_changed_rows_and_an_existing_out_without_it(
    tmp_path: Path, workflow: Path, fake_lmstudio: FakeLMStudio, lmflow_cli
) -> None:
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": "ann"}])
    out = tmp_path / "out.jsonl"
    args = ("batch", str(workflow), str(rows), "-o", str(out), "--no-log",
            "--base-url", fake_lmstudio.url)  # fmt: skip
    assert lmflow_cli(*args).exit_code == 0
    again = lmflow_cli(*args)
    assert again.exit_code == 2 and "already exists" in again.stderr
    write_rows(rows, [{"name": "ann"}, {"name": "bob"}])
    refused = lmflow_cli(*args, "--resume")
    assert refused.exit_code == 2
    assert "the rows file changed" in refused.stderr
    workflow.write_text(WORKFLOW.replace("Greet", "Hello"))
    refused = lmflow_cli(*args, "--resume")
    assert "the workflow file and the rows file changed" in refused.stderr
    assert greeted(fake_lmstudio) == Counter(["ann"])


def test_a_journal_that_is_not_one_is_refused(tmp_path: Path, workflow: Path, lmflow_cli) -> None:
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": "ann"}])
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.journal").write_text("not a database, just text\n" * 100)
    outcome = lmflow_cli("batch", str(workflow), str(rows), "-o", str(out), "--resume")
    assert outcome.exit_code == 2
    assert "out.jsonl.journal is not a batch journal" in outcome.stderr


def test_resume_runs_failed_rows_again_and_keeps_one_line_per_row(
    tmp_path: Path, workflow: Path, make_fake_lmstudio: Callable[..., FakeLMStudio], lmflow_cli
) -> None:
    failing = make_fake_lmstudio(chat_error=(400, {"error": "model crashed"}))
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": "ann"}, {"name": "bob"}, "{"])
    out = tmp_path / "out.jsonl"
    args = ("batch", str(workflow), str(rows), "-o", str(out), "--no-log", "--base-url")
    assert lmflow_cli(*args, failing.url).exit_code == 1
    assert Counter(r["status"] for r in read_out(out))["invalid"] == 1
    working = make_fake_lmstudio()
    assert lmflow_cli(*args, working.url, "--resume").exit_code == 1  # the bad row stays bad
    records = sorted(read_out(out), key=lambda r: r["line"])
    assert [r["line"] for r in records] == [1, 2, 3]
    assert [r["status"] for r in records] == ["succeeded", "succeeded", "invalid"]
    assert greeted(working) == Counter(["ann", "bob"])


def with_tool_step(tmp_path: Path, tag: str) -> Path:
    """The greeting workflow with an MCP server (the fixture server, tagged) and a tool step
    first: each row starts and stops its own server."""
    path = tmp_path / "greet-with-tool.yaml"
    path.write_text(
        WORKFLOW.replace(
            "steps:\n", f"mcp_servers:\n  fx: {fixture_server_entry(tag)}\nsteps:\n"
        ).replace(
            "  - id: hello\n",
            "  - {id: echo, tool: fx.echo, with: {text: '{{ inputs.name }}'}}\n"
            "  - id: hello\n    needs: [echo]\n",
        )
    )
    return path


def stop_mid_batch(command: list[str], out: Path, stop: signal.Signals, after: int = 3) -> int:
    """Start the batch `command` in the folder of `out`, send it `stop` once `after` rows
    are in OUT, and return its exit code."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen(command, cwd=out.parent, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(out.read_text().splitlines() if out.exists() else []) < after:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode is not None, stderr
    return process.returncode


def test_ctrl_c_mid_batch_keeps_finished_rows_and_resume_runs_each_row_once(
    tmp_path: Path, make_fake_lmstudio: Callable[..., FakeLMStudio], process_tag: str
) -> None:
    """Rows with an MCP server: Ctrl-C stops the batch (exit 130) and every server; the
    resumed batch asks the model once for each row the first one did not finish."""
    workflow = with_tool_step(tmp_path, process_tag)
    server = make_fake_lmstudio(chat_delay=0.3)
    names = [f"n{i}" for i in range(16)]
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": name} for name in names])
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "runner", "batch", str(workflow), str(rows), "-o", str(out),
               "--base-url", server.url, "--concurrency", "2", "-q"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    assert stop_mid_batch(command, out, signal.SIGINT) == 130
    assert wait_until_gone(process_tag) == []
    kept = {r["line"] for r in read_out(out)}
    assert 3 <= len(kept) < len(names)
    before = greeted(server)

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    records = read_out(out)
    assert sorted(r["line"] for r in records) == list(range(1, 17))
    assert {r["status"] for r in records} == {"succeeded"}
    assert {r["outputs"]["said"] for r in records} == {f"echo: Greet {n} 1 times" for n in names}
    after = greeted(server) - before
    # Every row the first batch finished is not asked again; every other row exactly once.
    assert after == Counter(names[line - 1] for line in range(1, 17) if line not in kept)
    # At most the two rows in flight at Ctrl-C were asked twice over both batches.
    assert sum(before.values()) - len(kept) <= 2


def test_check_inputs_types_raw_values_and_names_every_problem(workflow: Path) -> None:
    import lmflow_runner
    from lmflow_runner.errors import InputError

    loaded = lmflow_runner.load_workflow(workflow)
    assert lmflow_runner.check_inputs(loaded, {"name": "ann", "times": "3"}) == {
        "name": "ann",
        "times": 3,
    }
    with pytest.raises(InputError) as caught:
        lmflow_runner.check_inputs(loaded, {"times": "x", "extra": 1})
    assert "'name' is required" in caught.value.message
    assert "'x' is not an integer" in caught.value.message
    assert "unknown input 'extra'" in caught.value.message


def test_a_host_runs_as_many_rows_at_once_as_its_parallel_slots(
    tmp_path: Path, workflow: Path, make_fake_lmstudio: Callable[..., FakeLMStudio], lmflow_cli
) -> None:
    """No --slots: each host's capacity is what LM Studio reports for its loaded instance."""
    narrow = make_fake_lmstudio(chat_delay=0.2, models=[FakeModel(MODEL, loaded=True, parallel=1)])
    wide = make_fake_lmstudio(chat_delay=0.2, models=[FakeModel(MODEL, loaded=True, parallel=3)])
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": f"n{i}"} for i in range(12)])
    out = tmp_path / "out.jsonl"
    outcome = lmflow_cli(
        "batch", str(workflow), str(rows), "-o", str(out), "--no-log",
        "--base-url", narrow.url, "--base-url", wide.url,
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.stderr
    assert f"host {narrow.url}: 1 slots (as the host reports), models loaded" in outcome.stderr
    assert f"host {wide.url}: 3 slots (as the host reports), models loaded" in outcome.stderr
    assert narrow.peak_in_flight == 1
    assert wide.peak_in_flight == 3
    assert greeted(narrow) + greeted(wide) == Counter(f"n{i}" for i in range(12))


def test_rows_go_first_to_the_hosts_that_have_the_model_loaded(
    tmp_path: Path, workflow: Path, make_fake_lmstudio: Callable[..., FakeLMStudio], lmflow_cli
) -> None:
    cold = make_fake_lmstudio(chat_delay=0.2, models=[FakeModel(MODEL, loaded=False)])
    warm = make_fake_lmstudio(chat_delay=0.2, models=[FakeModel(MODEL, loaded=True, parallel=2)])
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": f"n{i}"} for i in range(4)])
    out = tmp_path / "out.jsonl"
    outcome = lmflow_cli(
        "batch", str(workflow), str(rows), "-o", str(out), "--no-log", "--concurrency", "2",
        "--base-url", cold.url, "--base-url", warm.url,
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.stderr
    assert f"host {cold.url}: 4 slots (default), models not loaded yet" in outcome.stderr
    assert cold.chat_requests == []
    assert greeted(warm) == Counter(f"n{i}" for i in range(4))


def test_hosts_listed_in_the_workflow_share_the_rows_and_get_no_token_from_the_file(
    tmp_path: Path, make_fake_lmstudio: Callable[..., FakeLMStudio], lmflow_cli, monkeypatch
) -> None:
    """`lmstudio.hosts` spreads rows like repeated --base-url, but those URLs come from the
    file: the token goes to them only under the trust rule (`127.1` stands for a host that
    is not this machine), as with `base_url`."""
    first, second = make_fake_lmstudio(chat_delay=0.1), make_fake_lmstudio(chat_delay=0.1)
    far = [fake.url.replace("127.0.0.1", "127.1") for fake in (first, second)]
    workflow = tmp_path / "greet.yaml"
    workflow.write_text(
        WORKFLOW.replace(
            "defaults:", f"lmstudio: {{hosts: [{far[0]}, {far[1]}], token_env: CI_KEY}}\ndefaults:"
        )
    )
    monkeypatch.setenv("CI_KEY", "sekrit-deploy-key")
    monkeypatch.delenv("LMFLOW_BASE_URL", raising=False)
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": f"n{i}"} for i in range(8)])
    args = ("batch", str(workflow), str(rows), "--no-log", "--slots", "1")
    outcome = lmflow_cli(*args, "-o", str(tmp_path / "out.jsonl"))
    assert outcome.exit_code == 0, outcome.stderr
    assert greeted(first) + greeted(second) == Counter(f"n{i}" for i in range(8))
    assert greeted(first) and greeted(second)
    sent = {r.headers.get("Authorization") for fake in (first, second) for r in fake.requests}
    assert sent == {None}
    hosts = {r["host"] for r in read_out(tmp_path / "out.jsonl")}
    assert hosts == set(far)

    # Named on the command line, the same hosts are the user's choice: they get the token.
    first.requests.clear()
    again = lmflow_cli(*args, "-o", str(tmp_path / "again.jsonl"), "--base-url", far[0])
    assert again.exit_code == 0, again.stderr
    assert {r.headers.get("Authorization") for r in first.requests} == {"Bearer sekrit-deploy-key"}


def test_rows_recorded_to_cassettes_replay_without_lm_studio(
    tmp_path: Path, workflow: Path, make_fake_lmstudio: Callable[..., FakeLMStudio], lmflow_cli
) -> None:
    fake = make_fake_lmstudio()
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": "ann"}, {"name": "bob", "times": 2}])
    cassettes = tmp_path / "cassettes"
    batch = ("batch", str(workflow), str(rows), "--no-log")
    recorded = lmflow_cli(*batch, "-o", str(tmp_path / "live.jsonl"),
                          "--base-url", fake.url, "--record", str(cassettes))  # fmt: skip
    assert recorded.exit_code == 0, recorded.stderr
    assert len(list(cassettes.glob("row-*.yaml"))) == 2
    fake.stop()

    # A row added in the middle: the others keep their cassettes (named by inputs, not line).
    write_rows(rows, [{"name": "ann"}, {"name": "cid"}, {"name": "bob", "times": 2}])
    replayed = lmflow_cli(*batch, "-o", str(tmp_path / "ci.jsonl"), "--replay", str(cassettes))
    assert replayed.exit_code == 1
    by_line = {r["line"]: r for r in read_out(tmp_path / "ci.jsonl")}
    assert by_line[1]["status"] == by_line[3]["status"] == "succeeded"
    assert by_line[1]["outputs"] == {"said": "echo: Greet ann 1 times"}
    assert by_line[3]["outputs"] == {"said": "echo: Greet bob 2 times"}
    assert by_line[2]["status"] == "error"
    assert "no cassette for this row" in by_line[2]["error"]
    assert f"--record {cassettes}" in by_line[2]["error"]

    elsewhere = ("--base-url", "http://127.0.0.1:9")
    refused = lmflow_cli(
        *batch, "-o", str(tmp_path / "x.jsonl"), "--replay", str(cassettes), *elsewhere
    )
    assert refused.exit_code == 2 and "cannot be used with --replay" in refused.stderr


def test_progress_lines_show_tokens_per_second(
    tmp_path: Path, workflow: Path, fake_lmstudio: FakeLMStudio, lmflow_cli
) -> None:
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": f"n{i}"} for i in range(3)])
    outcome = lmflow_cli("batch", str(workflow), str(rows), "-o", str(tmp_path / "out.jsonl"),
                         "--no-log", "--base-url", fake_lmstudio.url)  # fmt: skip
    assert outcome.exit_code == 0, outcome.stderr
    (last,) = [line for line in outcome.stderr.splitlines() if line.startswith("rows 3/3 done")]
    assert re.fullmatch(r"rows 3/3 done, 0 failed, [\d.]+ rows/s, [1-9]\d* tokens/s", last), last


def test_a_workflow_that_asks_no_model_asks_no_host_and_says_nothing_of_hosts(
    tmp_path: Path, lmflow_cli
) -> None:
    """Command steps only: no LM Studio is asked (none runs here), so there is no host line
    claiming models are not loaded."""
    workflow = tmp_path / "echo.yaml"
    workflow.write_text(
        "version: 1\nname: echo\ninputs:\n  name: {type: string}\n"
        "steps:\n  - {id: say, run: [echo, '{{ inputs.name }}']}\n"
        "outputs:\n  said: '{{ steps.say.output.stdout }}'\n"
    )
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": "ann"}, {"name": "bob"}])
    out = tmp_path / "out.jsonl"
    outcome = lmflow_cli("batch", str(workflow), str(rows), "-o", str(out), "--no-log",
                         "--base-url", down_url())  # fmt: skip
    assert outcome.exit_code == 0, outcome.stderr
    assert [r["outputs"]["said"] for r in sorted(read_out(out), key=lambda r: r["line"])] == [
        "ann\n",
        "bob\n",
    ]
    assert "host " not in outcome.stderr

"""Re-record the cassettes of the example workflows (tests/cassettes/<name>.yaml).

    python tests/record_cassettes.py                # every example
    python tests/record_cassettes.py changelog      # one of them

The model is scripted: the fake LM Studio of the test suite (tests/fakes/lmstudio.py) plays
a model whose turns are written below, computed from what the real tools answered. The MCP
servers are the REAL ones the workflows declare (mcp-server-time, mcp-server-git on a small
repository made here, the npm filesystem and memory servers pinned in tests/node), run by
`lmflow run --record` exactly as a user's run would. Each cassette is replayed once right
after recording, as a check. Then refresh the snapshots:
`python -m pytest tests/test_examples_replay.py --snapshot-update`.

To record a cassette with a real model instead, run the workflow against LM Studio:
`lmflow run workflows/<name>.yaml --record tests/cassettes/<name>.yaml --rerecord`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WORKFLOWS = ROOT / "workflows"
CASSETTES = TESTS / "cassettes"
sys.path.insert(0, str(TESTS))

from fakes.lmstudio import FakeLMStudio, FakeModel, image_summary  # noqa: E402
from png import png  # noqa: E402

Request = dict[str, Any]


@dataclass(frozen=True)
class Example:
    """How to record one example: where to run it, with which inputs, and the model's turns."""

    name: str
    models: Sequence[str | FakeModel]
    script: Sequence[Any]
    setup: Callable[[Path], tuple[Path, list[str]]]  # scratch dir -> (cwd, extra arguments)


# --- reading what the model was sent ---------------------------------------------------------


def tool_results(request: Request) -> list[str]:
    """The tool results the model sees this turn (after its last tool calls)."""
    results: list[str] = []
    for message in request["messages"]:
        if message["role"] == "assistant":
            results = []
        elif message["role"] == "tool":
            results.append(message["content"])
    return results


def prompt(request: Request) -> str:
    return next(m["content"] for m in request["messages"] if m["role"] == "user")


def answer(value: Any) -> str:
    return json.dumps(value, indent=2)


# --- meeting-planner: the time server ----------------------------------------------------------

PARTICIPANTS = {"America/New_York": "Ana", "Asia/Tokyo": "Kenji", "Asia/Kolkata": "Priya"}


def conversions(request: Request) -> list[dict[str, Any]]:
    return [json.loads(text) for text in tool_results(request)]


def fits(local: dict[str, Any], minutes: int = 30) -> bool:
    hour, minute = map(int, local["datetime"][11:16].split(":"))
    start = hour * 60 + minute
    weekday = local["day_of_week"] not in ("Saturday", "Sunday")
    return weekday and start >= 9 * 60 and start + minutes <= 18 * 60


def check_answer(request: Request) -> str:
    rows = [
        {
            "name": PARTICIPANTS[c["target"]["timezone"]],
            "timezone": c["target"]["timezone"],
            "local_start": c["target"]["datetime"][11:16],
            "local_day": c["target"]["day_of_week"],
            "fits": fits(c["target"]),
        }
        for c in conversions(request)
    ]
    return answer({"participants": rows, "everyone_fits": all(r["fits"] for r in rows)})


def convert(times: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    return [
        (
            "convert_time",
            {"source_timezone": "Europe/Berlin", "time": time, "target_timezone": zone},
        )
        for time in times
        for zone in PARTICIPANTS
    ]


def alternatives_answer(request: Request) -> str:
    slots: dict[str, list[dict[str, Any]]] = {}
    for c in conversions(request):
        slots.setdefault(c["source"]["datetime"][11:16], []).append(c["target"])
    answers = []
    for time, targets in slots.items():
        good = [PARTICIPANTS[t["timezone"]] for t in targets if fits(t)]
        bad = [
            f"{PARTICIPANTS[t['timezone']]} {t['datetime'][11:16]}" for t in targets if not fits(t)
        ]
        note = f"fits {', '.join(good) or 'nobody'}"
        if bad:
            note += f"; outside working hours for {', '.join(bad)}"
        answers.append({"time": time, "fits_everyone": not bad, "note": note})
    return answer({"slots": answers})


def invitation(request: Request) -> str:
    text = prompt(request)
    lines = re.findall(r"^- (\w+): (\d\d:\d\d) (\w+) \(([\w/]+)\)$", text, re.MULTILINE)
    schedule = "\n".join(f"- {name}: {start} on {day} ({zone})" for name, start, day, zone in lines)
    slots = re.findall(r'"time": "(\d\d:\d\d)"', text)
    offer = ""
    if slots:
        offer = (
            "\n\n16:00 is outside working hours for some of us, so here are other options "
            f"(Berlin time): {', '.join(slots)}. Please reply with the one that suits you."
        )
    return (
        "Subject: Quarterly roadmap review (30 min)\n\n"
        "Hi Ana, Kenji and Priya,\n\n"
        "I would like to hold our quarterly roadmap review, proposed for 16:00 Berlin time. "
        f"That is:\n{schedule}{offer}\n\nThanks, and talk soon!"
    )


def at_root(scratch: Path) -> tuple[Path, list[str]]:
    """Run from the project root, with the workflow's default inputs."""
    return ROOT, []


MEETING_PLANNER = Example(
    name="meeting-planner",
    models=["qwen/qwen3-4b-2507", "mistralai/magistral-small-2509", "google/gemma-3-12b"],
    script=[
        convert(["16:00"]),
        check_answer,
        convert(["09:30", "15:00"]),
        alternatives_answer,
        invitation,
    ],
    setup=at_root,
)


# --- changelog: mcp-server-git on a small repository -------------------------------------------

COMMITS = [
    ("Read CSV files into row dictionaries", {"csvq/reader.py": "def read(path): ...\n"}),
    (
        "Add --json output to the report command",
        {"csvq/report.py": "def report(rows, json=False): ...\n"},
    ),
    (
        "Fix crash when the input file is empty",
        {"csvq/reader.py": "def read(path):\n    return []\n"},
    ),
    (
        "Refactor: split the parser into tokenizer and reader",
        {"csvq/tokenizer.py": "def tokens(line): ...\n"},
    ),
    ("Add tests for the tokenizer", {"tests/test_tokenizer.py": "def test_tokens(): ...\n"}),
    ("Tweak defaults", {"csvq/config.py": "ROW_LIMIT = 1000  # was 100\n"}),
    ("ci: test on Python 3.13", {".github/workflows/ci.yml": "python: ['3.13']\n"}),
]


def make_repository(root: Path) -> None:
    """A repository whose commits (and so their hashes) are the same on every recording."""
    root.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Ada Lovelace",
        "GIT_AUTHOR_EMAIL": "ada@example.org",
        "GIT_COMMITTER_NAME": "Ada Lovelace",
        "GIT_COMMITTER_EMAIL": "ada@example.org",
    }

    def git(*args: str, day: int = 1) -> None:
        stamp = f"2026-03-{day:02d}T10:00:00+00:00"
        subprocess.run(
            ["git", *args],
            cwd=root,
            check=True,
            stdout=subprocess.DEVNULL,
            env={**env, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp},
        )

    git("init", "-q", "-b", "main")
    for day, (message, files) in enumerate(COMMITS, start=1):
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        git("add", "-A")
        git("commit", "-q", "-m", message, day=day)


def commit_hashes(request: Request) -> dict[str, str]:
    """Commit message -> short hash, from the git log in the prompt."""
    found = re.findall(r"Commit: ([0-9a-f]{40})\n.*?Message: (.*?)\n", prompt(request), re.DOTALL)
    return {message: sha[:7] for sha, message in found}


def show_vague_commit(request: Request) -> list[tuple[str, dict[str, str]]]:
    return [("git_show", {"repo_path": ".", "revision": commit_hashes(request)["Tweak defaults"]})]


def classify_answer(request: Request) -> str:
    sha = commit_hashes(request)
    entries = [
        ("Added", "Read CSV files into row dictionaries", "Read CSV files into row dictionaries"),
        (
            "Added",
            "Add a --json output to the report command",
            "Add --json output to the report command",
        ),
        ("Changed", "Raise the default row limit from 100 to 1000", "Tweak defaults"),
        (
            "Fixed",
            "Fix a crash when the input file is empty",
            "Fix crash when the input file is empty",
        ),
    ]
    return answer(
        {
            "entries": [
                {"category": category, "summary": summary, "commits": [sha[message]]}
                for category, summary, message in entries
            ],
            "breaking": False,
        }
    )


def changelog_entry(request: Request) -> str:
    text = prompt(request)
    entries = json.loads(re.search(r"^\[$.*^\]$", text, re.MULTILINE | re.DOTALL).group())  # type: ignore[union-attr]
    sections = []
    for category in ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"):
        items = [e for e in entries if e["category"] == category]
        if items:
            bullets = "\n".join(f"- {e['summary']} ({', '.join(e['commits'])})" for e in items)
            sections.append(f"### {category}\n\n{bullets}")
    return "## [Unreleased]\n\n" + "\n\n".join(sections)


def changelog_setup(scratch: Path) -> tuple[Path, list[str]]:
    repo = scratch / "csvq"
    make_repository(repo)
    return repo, []


CHANGELOG = Example(
    name="changelog",
    models=["qwen/qwen3-coder-30b", "google/gemma-3-12b"],
    script=[show_vague_commit, classify_answer, changelog_entry],
    setup=changelog_setup,
)


# --- repo-survey: the npm filesystem and memory servers ---------------------------------------

SAMPLE_PROJECT = "workflows/sample-project"  # committed, so a replay with --live-tools matches

SURVEY_NOTES = """\
Modules:
- tinyq/queue.py: the public `enqueue`; keeps every job in a module-level list `_JOBS` and
  saves the whole list on each call. A bare `except Exception: pass` swallows storage
  errors (marked TODO), so a failed save loses jobs silently.
- tinyq/storage.py: pickles the job list to a fixed relative path `jobs.pkl` (depends on
  the working directory) and unpickles it; loading a pickle runs arbitrary code.
- tinyq/worker.py: an endless loop that loads the jobs and runs each one, with no error
  handling and no removal of finished jobs, so jobs run again every second.
Dependencies: queue -> storage, worker -> storage.
Tests: only tests/test_queue.py, which enqueues one job; storage and worker are untested."""

RISKS = {
    "summary": "A small queue whose storage and worker are untested. Errors are swallowed "
    "and finished jobs are never removed, so failures are silent and jobs repeat.",
    "modules": [
        {
            "path": "tinyq/worker.py",
            "risk": "high",
            "reason": "No error handling, and finished jobs are never removed: they run again.",
        },
        {
            "path": "tinyq/queue.py",
            "risk": "high",
            "reason": "Global mutable state and a bare except that hides lost jobs.",
        },
        {
            "path": "tinyq/storage.py",
            "risk": "medium",
            "reason": "Unpickles a file from the working directory; no tests.",
        },
    ],
}


def started_at(request: Request) -> str:
    return re.search(r"dated (\S+?)\)", prompt(request)).group(1)  # type: ignore[union-attr]


def create_entities(request: Request) -> list[tuple[str, dict[str, Any]]]:
    date = started_at(request)
    entities = [
        {"name": SAMPLE_PROJECT, "entityType": "repository", "observations": ["tinyq 0.3.0"]}
    ]
    entities += [
        {
            "name": m["path"],
            "entityType": "module",
            "observations": [f"risk {m['risk']}: {m['reason']} (survey of {date})"],
        }
        for m in RISKS["modules"]
    ]
    return [("create_entities", {"entities": entities})]


def repo_survey_setup(scratch: Path) -> tuple[Path, list[str]]:
    # From the project root, as the README runs it; the memory graph goes to a fresh file.
    return ROOT, [
        "-i", f"path={SAMPLE_PROJECT}",
        "-i", "remember=true",
        "-i", f"memory_file={scratch / 'memory.jsonl'}",
    ]  # fmt: skip


REPO_SURVEY = Example(
    name="repo-survey",
    models=["qwen/qwen3-coder-30b", "mistralai/magistral-small-2509"],
    script=[
        [("directory_tree", {"path": "."})],
        [
            ("read_text_file", {"path": "tinyq/queue.py"}),
            ("read_text_file", {"path": "tinyq/worker.py"}),
            ("read_text_file", {"path": "tinyq/storage.py"}),
        ],
        SURVEY_NOTES,
        answer(RISKS),
        [("search_nodes", {"query": SAMPLE_PROJECT})],
        create_entities,
        [
            (
                "create_relations",
                {
                    "relations": [
                        {"from": SAMPLE_PROJECT, "to": m["path"], "relationType": "contains"}
                        for m in RISKS["modules"]
                    ]
                },
            )
        ],
        "Recorded the repository, its three riskiest modules and a contains-relation to each.",
    ],
    setup=repo_survey_setup,
)


# --- code-review-loop: a worker, the tests, a reviewer, until approved --------------------------

FIRST_SLUGIFY = """import re


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower())
"""
SECOND_SLUGIFY = """import re


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
"""


def write_slugify(request: Request) -> str:
    """The first version keeps hyphens at the ends; told so, the second strips them."""
    again = "Your previous version:" in prompt(request)
    return answer({"code": SECOND_SLUGIFY if again else FIRST_SLUGIFY})


def review_slugify(request: Request) -> str:
    if "(exit code 0)" in prompt(request):
        return answer({"approved": True, "notes": "All tests pass; short and clear."})
    return answer(
        {
            "approved": False,
            "notes": "Leading and trailing separators become hyphens at the ends: "
            "strip hyphens from the result.",
        }
    )


CODE_REVIEW_LOOP = Example(
    name="code-review-loop",
    models=["qwen/qwen3-coder-30b", "mistralai/magistral-small-2509"],
    script=[write_slugify, review_slugify, write_slugify, review_slugify],
    setup=at_root,
)


# --- analyze-repo: sub-workflows sharing the npm filesystem server -------------------------

MODULES = ["tinyq/queue.py", "tinyq/storage.py", "tinyq/worker.py"]
ERROR_FINDINGS = [
    {"path": "tinyq/queue.py", "problem": "`except Exception: pass` hides a failed save."},
    {"path": "tinyq/worker.py", "problem": "A job that raises stops the worker loop."},
]
UNTESTED = ["tinyq/storage.py", "tinyq/worker.py"]


def analyzer_turn(request: Request) -> Any:
    """The model of each analyzer, told apart by its agent's system prompt (the analyzers
    after the first run at the same time), and its round by whether tools have answered."""
    system = next((m["content"] for m in request["messages"] if m["role"] == "system"), "")
    answered = any(m["role"] == "tool" for m in request["messages"])
    if system.startswith("You analyze source code"):
        return answer({"modules": MODULES}) if answered else [("directory_tree", {"path": "."})]
    if system.startswith("You review error handling"):
        if answered:
            return answer({"findings": ERROR_FINDINGS})
        return [("read_text_file", {"path": path}) for path in MODULES]
    if system.startswith("You check test coverage"):
        if answered:
            return answer({"untested": UNTESTED})
        return [("read_text_file", {"path": "tests/test_queue.py"})]
    return (
        "# tinyq\n\n"
        "1. **tinyq/queue.py** swallows failed saves: log and re-raise instead.\n"
        "2. **tinyq/worker.py** stops on the first failing job and has no tests: catch per "
        "job and add a test.\n"
        "3. **tinyq/storage.py** has no tests: add a round-trip test."
    )


def analyze_repo_setup(scratch: Path) -> tuple[Path, list[str]]:
    return ROOT, ["-i", f"path={SAMPLE_PROJECT}"]


ANALYZE_REPO = Example(
    name="analyze-repo",
    models=["qwen/qwen3-coder-30b"],
    script=[analyzer_turn] * 7,  # three analyzers of two rounds, then the report
    setup=analyze_repo_setup,
)


# --- commit-message: mcp-server-git on staged changes, approved with --answer ------------------

COMMIT_MESSAGE_TEXT = """\
Skip blank lines when reading CSV files

Files saved by spreadsheet programs often end with empty lines, which the
reader turned into rows without fields. Leave them out."""


def commit_message_setup(scratch: Path) -> tuple[Path, list[str]]:
    repo = scratch / "csvq"
    make_repository(repo)
    (repo / "csvq/reader.py").write_text(
        "def read(path):\n    return [line for line in open(path) if line.strip()]\n"
    )
    subprocess.run(["git", "add", "csvq/reader.py"], cwd=repo, check=True)
    # The question cannot be asked here (no terminal): the answer is given, as in CI.
    return repo, ["--answer", "approve=yes"]


COMMIT_MESSAGE = Example(
    name="commit-message",
    models=["qwen/qwen3-coder-30b"],
    script=[COMMIT_MESSAGE_TEXT],
    setup=commit_message_setup,
)


# --- ask-the-code: embeddings pick the files the model reads ------------------------------------


def code_answer(request: Request) -> str:
    """An answer from the files the prompt holds (the nearest ones), naming them."""
    files = re.findall(r"^File: (\S+)$", prompt(request), re.MULTILINE)
    return (
        "The jobs are pickled to `jobs.pkl` in the working directory by `storage.save`, which "
        "`enqueue` calls after each new job. When saving fails, `enqueue` swallows the error "
        "(a bare `except Exception: pass`, marked TODO), so the job stays only in memory and "
        f"is lost when the process ends. Based on: {', '.join(files)}."
    )


ASK_THE_CODE = Example(
    name="ask-the-code",
    models=[
        "qwen/qwen3-coder-30b",
        FakeModel("text-embedding-nomic-embed-text-v1.5", type="embedding", loaded=True),
    ],
    script=[code_answer],
    setup=at_root,
)


# --- chart-reader: an image for a vision model --------------------------------------------------

CHART = WORKFLOWS / "images" / "quarterly-sales.png"
SALES = {"Q1": 40, "Q2": 55, "Q3": 35, "Q4": 80}
BAR_COLOURS = [(66, 133, 244), (52, 168, 83), (251, 188, 5), (234, 67, 53)]
WIDTH, HEIGHT, BASE, SCALE = 200, 120, 110, 1.0  # 1 px per thousand euros, bars up from y=110


def chart_pixel(x: int, y: int) -> tuple[int, int, int]:
    """The sample chart: white, a grey axis, a grid line every 20, four coloured bars."""
    for index, (colour, sales) in enumerate(zip(BAR_COLOURS, SALES.values(), strict=True)):
        left = 20 + index * 45
        if left <= x < left + 30 and BASE - sales * SCALE <= y < BASE:
            return colour
    if y == BASE or x == 10:
        return (90, 90, 90)
    if (BASE - y) % 20 == 0 and x > 10:
        return (225, 225, 225)
    return (255, 255, 255)


def draw_chart() -> None:
    CHART.parent.mkdir(exist_ok=True)
    CHART.write_bytes(png(WIDTH, HEIGHT, chart_pixel))


def read_chart(request: Request) -> str:
    """The vision model's answer: the drawn values, once the chart itself has arrived."""
    parts = request["messages"][-1]["content"]
    seen = [image_summary(p) for p in parts if p.get("type") == "image_url"]
    if len(seen) != 1 or f"{WIDTH}x{HEIGHT}" not in seen[0]:
        sys.exit(f"chart-reader: the chart did not reach the model: {seen}")
    return answer({"bars": [{"quarter": q, "sales": v} for q, v in SALES.items()]})


def chart_summary(request: Request) -> str:
    quarter = re.search(r"about (Q\d)", prompt(request)).group(1)  # type: ignore[union-attr]
    values = list(SALES.values())
    index = list(SALES).index(quarter)
    if index == 0:
        return f"{quarter} sales were {values[0]}k EUR, the first quarter of the year."
    change = values[index] - values[index - 1]
    trend = f"up {change}k" if change >= 0 else f"down {-change}k"
    return f"{quarter} sales reached {values[index]}k EUR, {trend} from {list(SALES)[index - 1]}."


def chart_setup(scratch: Path) -> tuple[Path, list[str]]:
    draw_chart()
    return ROOT, []


CHART_READER = Example(
    name="chart-reader",
    models=[FakeModel("qwen/qwen2.5-vl-7b", type="vlm", loaded=True), "qwen/qwen3-4b-2507"],
    script=[read_chart, chart_summary],
    setup=chart_setup,
)

EXAMPLES = {
    e.name: e
    for e in (
        MEETING_PLANNER,
        CHANGELOG,
        REPO_SURVEY,
        CODE_REVIEW_LOOP,
        ANALYZE_REPO,
        COMMIT_MESSAGE,
        ASK_THE_CODE,
        CHART_READER,
    )
}


# --- recording ----------------------------------------------------------------------------


def lmflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def record(example: Example) -> None:
    workflow = WORKFLOWS / f"{example.name}.yaml"
    cassette = CASSETTES / f"{example.name}.yaml"
    models = [m if isinstance(m, FakeModel) else FakeModel(m, loaded=True) for m in example.models]
    with (
        tempfile.TemporaryDirectory() as scratch,
        FakeLMStudio(models=models, script=example.script) as lm,
    ):
        cwd, extra = example.setup(Path(scratch))
        recorded = lmflow(
            "run", str(workflow), "--record", str(cassette), "--rerecord", "--base-url", lm.url,
            "--json", "-q", *extra, cwd=cwd,
        )  # fmt: skip
        if recorded.returncode != 0:
            sys.exit(f"{example.name}: recording failed:\n{recorded.stderr}{recorded.stdout}")
        replayed = lmflow(
            "run", str(workflow), "--replay", str(cassette), "--json", "-q", *extra, cwd=ROOT
        )
        if replayed.returncode != 0:
            sys.exit(f"{example.name}: the new cassette does not replay:\n{replayed.stderr}")
        outputs = json.loads(replayed.stdout)["outputs"]
        if outputs != json.loads(recorded.stdout)["outputs"]:
            sys.exit(f"{example.name}: the replay gave other outputs than the recording")
    print(f"recorded {cassette.relative_to(ROOT)} ({len(lm.chat_requests)} model requests)")


def main(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(EXAMPLES))
    if unknown:
        sys.exit(f"unknown example(s): {', '.join(unknown)}; known: {', '.join(EXAMPLES)}")
    for name in names or EXAMPLES:
        record(EXAMPLES[name])


if __name__ == "__main__":
    main(sys.argv[1:])

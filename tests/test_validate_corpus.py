"""The corpus of invalid workflows: each file is one mistake people make.

Every corpus file starts with `# mistake: ...` and marks each line where an error must be
reported with a trailing `# <- rule-id` (several rules: `# <- rule-a, rule-b`). The errors
the validator finds must be exactly the marked ones, and its JSON output is kept as a
snapshot per file so a change of wording or position shows up in review.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from runner.spec import check_file

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "validate_corpus" / "invalid"
CASES = sorted(CORPUS.glob("*.yaml"))
EXAMPLES = sorted((ROOT / "workflows").glob("*.yaml"))
MARKER = re.compile(r"#\s*<-\s*([a-z0-9-]+(?:\s*,\s*[a-z0-9-]+)*)\s*$")


def markers(path: Path) -> set[tuple[int, str]]:
    """(line, rule) for every `# <- rule` marker in a corpus file."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    found: set[tuple[int, str]] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        match = MARKER.search(line)
        if match:
            found.update((number, rule.strip()) for rule in match[1].split(","))
    return found


def test_the_corpus_covers_enough_mistakes() -> None:
    assert len(CASES) >= 45
    descriptions = [path.read_bytes().split(b"\n", 1)[0] for path in CASES]
    assert len(set(descriptions)) == len(CASES), "two corpus files describe the same mistake"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_case_describes_its_mistake_and_marks_a_line(path: Path) -> None:
    assert path.read_bytes().startswith(b"# mistake: ")
    assert markers(path), "mark the line of each expected error with `# <- rule-id`"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_errors_are_exactly_the_marked_lines(path: Path) -> None:
    workflow, problems = check_file(path)
    errors = {(p.line, p.rule) for p in problems if p.is_error}
    assert workflow is None
    assert errors, "an invalid workflow must produce at least one error"
    assert errors == markers(path)
    assert all(p.message and p.col >= 1 for p in problems)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_json_output_matches_snapshot(path: Path, lmflow_cli, snapshot, monkeypatch) -> None:
    monkeypatch.chdir(CORPUS)  # relative paths keep the snapshots machine-independent
    outcome = lmflow_cli("validate", "--offline", "--format", "json", path.name)
    assert outcome.exit_code == 2
    payload = json.loads(outcome.stdout)
    assert payload["valid"] is False
    assert payload == snapshot(extension_class=JSONSnapshotExtension)


@pytest.mark.parametrize(
    "path",
    EXAMPLES or [pytest.param(None, marks=pytest.mark.skip(reason="workflows/ is empty"))],
    ids=lambda p: p.stem if p else "none",
)
def test_example_workflows_are_valid(path: Path, lmflow_cli) -> None:
    outcome = lmflow_cli("validate", "--offline", "--format", "json", str(path))
    payload = json.loads(outcome.stdout)
    assert payload["files"][0]["problems"] == []
    assert outcome.exit_code == 0

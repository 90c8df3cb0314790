"""The docs stay true: every YAML example parses, and every complete workflow in them (and in
the README) validates without a problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from runner.spec import parse_document, validate_document

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def yaml_blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            found.append((f"{page.relative_to(ROOT)}:{line}", match.group(1)))
    return found


BLOCKS = yaml_blocks()


def is_workflow(block: str) -> bool:
    """A complete workflow, as opposed to a fragment or another file (a cassette)."""
    data = yaml.safe_load(block)
    return isinstance(data, dict) and "version" in data and "steps" in data


def test_the_docs_have_complete_workflow_examples() -> None:
    assert sum(is_workflow(block) for _, block in BLOCKS) >= 3


@pytest.mark.parametrize(("where", "block"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_every_yaml_example_parses(where: str, block: str) -> None:
    yaml.safe_load(block)


@pytest.mark.parametrize(
    ("where", "block"),
    [(w, b) for w, b in BLOCKS if is_workflow(b)],
    ids=[w for w, b in BLOCKS if is_workflow(b)],
)
def test_every_complete_workflow_example_is_valid(where: str, block: str) -> None:
    problems = validate_document(parse_document(block, where))
    assert [p.format() for p in problems] == []

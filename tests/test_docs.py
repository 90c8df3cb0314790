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


def test_the_readme_says_how_to_reach_a_server_at_another_url() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for way in ("--base-url", "LMFLOW_BASE_URL", "lmstudio: {base_url:"):
        assert way in readme.split("## Commands and exit codes")[0], way


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_a_cassette_is_explained_where_a_page_first_uses_one(page: Path) -> None:
    """The paragraph that first says "cassette" says what one is, or links to where it is."""
    text = page.read_text(encoding="utf-8")
    uses = [m.start() for m in re.finditer("cassette", text, re.IGNORECASE)]
    body = [at for at in uses if not text[text.rfind("\n", 0, at) + 1 :].startswith("#")]
    if not body:
        return
    at = body[0]
    paragraph = text[text.rfind("\n\n", 0, at) : text.find("\n\n", at)]
    assert (
        "cassette is" in paragraph.lower()
        or "cassette*" in paragraph
        or ("testing.md" in paragraph or "runlog.md#cassettes" in paragraph)
    ), paragraph

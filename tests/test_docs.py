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


LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.DOTALL)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    dashes, a repeated heading numbered (`-1`, `-2`, ...)."""
    found: set[str] = set()
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for heading in re.findall(r"^#+ (.*)$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        repeat = next(
            n for n in range(len(found) + 1) if (f"{slug}-{n}" if n else slug) not in found
        )
        found.add(f"{slug}-{repeat}" if repeat else slug)
    return found


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for link in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path) if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no such heading")
    assert broken == []


def test_the_architecture_page_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = [
        path.relative_to(ROOT / "runner")
        for path in (ROOT / "runner").rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    ]
    assert [str(m) for m in modules if m.name not in text] == []

"""Everything about the workflow file, offline and pure: load, validate, model.

Never imports network or execution code, so `lmflow validate --offline` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import WorkflowInvalidError
from .load import Document, parse_document, read_document
from .model import Workflow, build_workflow
from .problems import Problem
from .validate import validate_document

__all__ = [
    "Document",
    "Problem",
    "Workflow",
    "check_file",
    "load_workflow",
    "parse_document",
    "read_document",
    "validate_document",
]


def check_file(path: Path) -> tuple[Workflow | None, list[Problem]]:
    """Load and validate one file: the Workflow (None when any error) and every problem."""
    doc = read_document(path)
    problems = validate_document(doc)
    if any(p.is_error for p in problems) or not isinstance(doc.data, dict):
        return None, problems
    return build_workflow(path, doc.data, doc.source), problems


def load_workflow(path: Path) -> Workflow:
    """The Workflow of a valid file; raises WorkflowInvalidError listing every error."""
    workflow, problems = check_file(path)
    if workflow is None:
        errors = [p for p in problems if p.is_error]
        raise WorkflowInvalidError(
            f"{path} is not a valid workflow ({len(errors)} error(s))", errors
        )
    return workflow

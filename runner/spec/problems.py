"""A problem found in a workflow file: what, where, and how to fix it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Problem:
    """One finding, printed as `path:line:col: severity: message [rule]` plus an optional hint."""

    path: str
    line: int
    col: int
    message: str
    rule: str
    hint: str | None = None
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def located(self) -> str:
        """`path:line:col: message`: the problem as the text of an error raised for it."""
        return f"{self.path}:{self.line}:{self.col}: {self.message}"

    def format(self) -> str:
        """`path:line:col: severity: message [rule]`, then an indented hint line."""
        line = f"{self.path}:{self.line}:{self.col}: {self.severity}: {self.message} [{self.rule}]"
        return line + (f"\n    hint: {self.hint}" if self.hint else "")

"""lmflow: declarative, version-controlled workflows for local LLMs with MCP tools.

Import it as `lmflow_runner` (docs/api.md: the public API and why that name). Importing it
stays cheap (the CLI reads `__version__` from here): the API is loaded on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if __name__ != "lmflow_runner":
    # Imported by its old name `runner` from this same folder: become lmflow_runner, so the
    # two names never hold two copies of the modules (runner/_old_name.py). Another copy of
    # the code (PYTHONPATH at an older checkout) stays itself.
    _installed = importlib.util.find_spec("lmflow_runner")
    _folders = (
        [os.path.realpath(p) for p in (_installed.submodule_search_locations or ())]
        if (_installed is not None)
        else []
    )
    if [os.path.realpath(p) for p in __path__] == _folders:
        importlib.import_module("lmflow_runner._old_name").install(__name__)

if TYPE_CHECKING:
    from .api import (
        RunOptions,
        SharedServers,
        StepResult,
        WorkflowResult,
        agent_workflow,
        check_inputs,
        list_models,
        load_workflow,
        models_used,
        open_servers,
        run_workflow,
        run_workflow_sync,
    )

__all__ = [
    "RunOptions",
    "SharedServers",
    "StepResult",
    "WorkflowResult",
    "__version__",
    "agent_workflow",
    "check_inputs",
    "list_models",
    "load_workflow",
    "models_used",
    "open_servers",
    "run_workflow",
    "run_workflow_sync",
]


def __getattr__(name: str) -> Any:
    """The public API, imported when first used (PEP 562)."""
    if name in __all__:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

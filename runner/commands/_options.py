"""Options several commands share, declared once so their names and help never drift."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several click options as one decorator (applied in the order written)."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


base_url = click.option(
    "--base-url",
    metavar="URL",
    help="LM Studio server (default: LMFLOW_BASE_URL, the workflow's lmstudio.base_url, "
    "http://localhost:1234).",
)
refresh = click.option("--refresh", is_flag=True, help="Ignore the cached model list.")
cache_ttl = click.option(
    "--cache-ttl",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Seconds a cached model list stays fresh (default 60, LMFLOW_MODEL_CACHE_TTL).",
)
model_check = compose(
    base_url,
    refresh,
    cache_ttl,
    click.option("--require-loaded", is_flag=True, help="A model that is not loaded is an error."),
    click.option("--load", "load_models", is_flag=True, help="Load every unloaded model up front."),
)
inputs = compose(
    click.option(
        "-i",
        "--input",
        "pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help="An input value (repeatable).",
    ),
    click.option(
        "--inputs",
        "inputs_file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="A YAML or JSON file of inputs; -i values override it.",
    ),
)
as_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
quiet = click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
no_log = click.option("--no-log", is_flag=True, help="Write no run log.")

"""`lmflow models`: what the LM Studio server has, loaded or not."""

from __future__ import annotations

import asyncio
import json

import click

from ..catalog import Catalog, ModelInfo, model_cache_ttl
from ..lmstudio_server import resolve_server
from ..preflight import fetch_catalog
from . import _options as options

_COLUMNS = ("ID", "TYPE", "STATE", "CONTEXT", "TOOLS")


def _context(model: ModelInfo) -> str:
    """`loaded/max` when loaded with a known size, else the maximum."""
    maximum = str(model.max_context_length) if model.max_context_length else "-"
    if model.loaded_context_length:
        return f"{model.loaded_context_length}/{maximum}"
    return maximum


def _row(model: ModelInfo) -> tuple[str, ...]:
    state = (
        model.state
        if model.activity in (None, model.state)
        else f"{model.state} ({model.activity})"
    )
    tools = {True: "yes", False: "no", None: "?"}[model.tool_use]
    return (model.id, model.type, state, _context(model), tools)


def _table(catalog: Catalog) -> str:
    rows = [_COLUMNS, *(_row(m) for m in catalog.models)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@click.command(help="List the models the LM Studio server has: type, state, context, tool use.")
@options.as_json
@options.base_url
@options.refresh
@options.cache_ttl
def command(as_json: bool, base_url: str | None, refresh: bool, cache_ttl: float | None) -> int:
    server = resolve_server(base_url)
    ttl = model_cache_ttl(cache_ttl)
    catalog = asyncio.run(fetch_catalog(server, ttl=ttl, refresh=refresh))
    if as_json:
        click.echo(json.dumps(catalog.as_dict(), indent=2))
        return 0
    if catalog.models:
        click.echo(_table(catalog))
    source = f"{catalog.server}, {catalog.flavour} API"
    age = f", cached {catalog.age:.0f} s ago" if catalog.age >= 1 else ""
    click.echo(f"{len(catalog.models)} models ({source}{age})")
    return 0

"""`lmflow doctor`: is everything lmflow needs ready? One line per check, with the fix."""

from __future__ import annotations

import asyncio

import click

from ..catalog import model_cache_ttl
from ..errors import EXIT_ENVIRONMENT, EXIT_OK
from ..lmstudio_server import resolve_server
from ..preflight import diagnose
from . import _options as options

_COLOURS = {"ok": "green", "warn": "yellow", "fail": "red"}


@click.command(help="Check the LM Studio server, auth, the lms CLI and the model cache.")
@options.base_url
def command(base_url: str | None) -> int:
    server = resolve_server(base_url)
    checks = asyncio.run(diagnose(server, ttl=model_cache_ttl()))
    width = max(len(check.name) for check in checks)
    for check in checks:
        label = click.style(check.status.upper().ljust(4), fg=_COLOURS[check.status])
        click.echo(f"{label}  {check.name.ljust(width)}  {check.detail}")
        if check.fix:
            click.echo(f"{'':4}  {'':{width}}  fix: {check.fix}")
    return EXIT_ENVIRONMENT if any(c.status == "fail" for c in checks) else EXIT_OK

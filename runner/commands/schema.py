"""`lmflow schema`: print the workflow JSON Schema (for editors and other tools)."""

from __future__ import annotations

import click

from ..spec.schema import schema_text


@click.command("schema")
def command() -> int:
    """Print the JSON Schema of the workflow format (version 1).

    Point your editor at it with a first line such as
    `# yaml-language-server: $schema=./workflow.schema.json`.
    """
    click.echo(schema_text(), nl=False)
    return 0

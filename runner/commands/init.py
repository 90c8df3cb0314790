"""`lmflow init`: write a commented starter workflow that validates as it is."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import EXIT_OK, ConfigurationError

STARTER = """\
# A starter lmflow workflow. Check it with `lmflow validate {file}`, run it with
# `lmflow run {file} -i topic="tide pools"`. Every key is explained in the workflow
# reference (docs/workflow-reference.md); `lmflow schema > workflow.schema.json` gives your
# editor completion: point the first line at that file.
version: 1
name: {name}
description: Explain a topic in a few sentences, then sum it up in one line.

# Which LM Studio server; --base-url or LMFLOW_BASE_URL override it.
# lmstudio:
#   base_url: http://localhost:1234

# Short names for the models the steps use. `lmflow models` lists what your server has.
models:
  small: qwen/qwen3-4b-2507

defaults:
  model: small          # every step uses this model unless it names its own
  temperature: 0.2

# What a run takes: `-i topic=...` on the command line.
inputs:
  topic: {{type: string, default: "tide pools", description: What to explain}}

# MCP servers whose tools the steps may use, started once per run. For example the time
# server (`pip install mcp-server-time`); list it under a step's `mcp:` to use it.
# mcp_servers:
#   time:
#     command: python
#     args: ["-m", "mcp_server_time"]

steps:
  - id: explain
    name: Explain the topic    # shown in progress
    prompt: |
      Explain {{{{ inputs.topic }}}} to a curious twelve-year-old in four sentences.

  - id: summary                # runs after `explain`, because it reads its output
    prompt: "Sum this up in one line: {{{{ steps.explain.output }}}}"

# What the run prints at the end (and returns with --json).
outputs:
  explanation: "{{{{ steps.explain.output }}}}"
  summary: "{{{{ steps.summary.output }}}}"
"""


@click.command("init")
@click.argument("name", default="workflow")
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
def command(name: str, force: bool) -> int:
    """Write NAME.yaml (default workflow.yaml): a commented starter workflow to edit.

    NAME may be a path (`workflows/triage` or `workflows/triage.yaml`); the workflow's
    `name:` is the file name without .yaml.
    """
    path = Path(name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if path.exists() and not force:
        raise ConfigurationError(
            f"{path} already exists", hint="pick another NAME, or pass --force to replace it"
        )
    if not path.parent.is_dir():
        raise ConfigurationError(
            f"directory {path.parent} does not exist", hint=f"create it: mkdir -p {path.parent}"
        )
    stem = path.name.rsplit(".", 1)[0]
    path.write_text(STARTER.format(file=path, name=json.dumps(stem)), encoding="utf-8")
    click.echo(f"wrote {path}: check it with `lmflow validate {path}`, then `lmflow run {path}`")
    return EXIT_OK

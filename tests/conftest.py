from collections.abc import Callable
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

# The fake LM Studio (tests/fakes/lmstudio.py) and an isolated model cache for every test.
from fakes.fixtures import (  # noqa: F401
    fake_lmstudio,
    isolated_lmflow_env,
    make_fake_lmstudio,
)

# Real MCP servers for integration tests: see tests/mcp_support.py.
from mcp_support import (  # noqa: F401
    conformance_suite,
    everything_server_js,
    filesystem_server_js,
    http_fixture_url,
    memory_server_js,
    node_modules,
    process_tag,
)

from runner.cli import cli
from runner.errors import LmflowError

# --- `lmflow ...` in-process, for the validator's CLI tests ----------------------------------


@dataclass(frozen=True)
class CliOutcome:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def lmflow_cli() -> Callable[..., CliOutcome]:
    """Run `lmflow ARGS` through click's CliRunner with the exit code the console script gives.

    Commands return their exit code, which click's standalone mode would drop, so the group
    runs with standalone_mode=False and errors map to codes as in runner.cli.main.
    """

    def run(*args: str) -> CliOutcome:
        result = CliRunner().invoke(cli, list(args), standalone_mode=False)
        error = result.exception
        if isinstance(error, click.ClickException):
            return CliOutcome(error.exit_code, result.stdout, error.format_message())
        if isinstance(error, LmflowError):
            return CliOutcome(error.exit_code, result.stdout, error.message)
        if error is not None:
            raise error
        return CliOutcome(result.return_value, result.stdout, result.stderr)

    return run

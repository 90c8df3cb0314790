"""The exception hierarchy. Each class carries the exit code it maps to (DESIGN.md), so the
CLI turns any lmflow error into the right code without a table of special cases."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass

EXIT_OK = 0
EXIT_STEP_FAILED = 1
EXIT_INVALID = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 143, SIGHUP 129 (see Stopped)


class LmflowError(Exception):
    """Base of every error lmflow raises on purpose. `hint` says how to fix it."""

    exit_code = EXIT_STEP_FAILED
    default_hint: str | None = None
    """The hint when the place that raises knows nothing more specific: every error of the
    environment has one, so the user is never left without a next step."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint


# --- exit code 2: the workflow file or the command line is invalid -------------------------


class ConfigurationError(LmflowError):
    """The workflow file, an input value or a command-line option is wrong."""

    exit_code = EXIT_INVALID


class WorkflowInvalidError(ConfigurationError):
    """The workflow failed validation; `problems` holds every finding."""

    def __init__(self, message: str, problems: Sequence[object]) -> None:
        super().__init__(message)
        self.problems = list(problems)


class InputError(ConfigurationError):
    """A workflow input is missing or its value does not fit the declared type."""


# --- exit code 3: the environment is not ready ---------------------------------------------


class EnvironmentNotReadyError(LmflowError):
    """Something outside the workflow is missing: a server, a model, a cassette entry."""

    exit_code = EXIT_ENVIRONMENT
    default_hint = (
        "`lmflow doctor` checks the LLM server, its token and the model cache; "
        "`lmflow validate FILE` checks the workflow's models"
    )


class LLMClientError(EnvironmentNotReadyError):
    """Talking to the LLM server failed."""

    default_hint = (
        "check the server at --base-url (or LMFLOW_BASE_URL): `lmflow doctor` says what is wrong"
    )


class LLMConnectionError(LLMClientError):
    """The LLM server could not be reached."""

    default_hint = (
        "start LM Studio's server with `lms server start`, or point lmflow at yours with "
        "--base-url or LMFLOW_BASE_URL"
    )


class LLMTimeoutError(LLMClientError):
    """The LLM server did not answer in time."""

    default_hint = (
        "the model may still be loading or the machine is busy: load it up front with --load, "
        "or raise lmstudio.timeout in the workflow"
    )


class LLMTruncatedReplyError(LLMClientError):
    """The LLM server began to answer, but the reply ended before its end: a body cut off
    mid-way, or a stream that stopped without a finish reason or `[DONE]`. Not "cannot
    reach": the server was reached, and a partial answer must never pass for a whole one."""

    default_hint = (
        "the server closed the reply early (a crash, out of memory, a proxy): "
        "see its log and try again"
    )


class LLMResponseError(LLMClientError):
    """The LLM server answered with an error or with something that is not its protocol."""

    default_hint = (
        "check that --base-url is LM Studio or an OpenAI-compatible server; its own log "
        "(LM Studio: Developer tab) says why it refused the request"
    )

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status_code = status_code
        self.code = code


class AuthenticationError(LLMResponseError):
    """The server wants a bearer token (401/403)."""

    default_hint = (
        "set the API token in the variable the workflow's lmstudio.token_env names "
        "(default LM_API_TOKEN)"
    )


@dataclass(frozen=True)
class SourceLocation:
    """Where in a workflow file something was written (1-based)."""

    path: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


class ModelNotFoundError(EnvironmentNotReadyError):
    """A model named by the workflow is not on the server.

    The wording comes from the caller (the model check), so `lmflow run` says exactly what
    `lmflow validate` says; the attributes are for code that wants the parts.
    """

    default_hint = "`lmflow models` lists the models the server has"

    def __init__(
        self,
        message: str,
        *,
        model: str,
        available: Sequence[str],
        closest: Sequence[str] = (),
        location: SourceLocation | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.model = model
        self.available = list(available)
        self.closest = list(closest)
        self.location = location


class ModelValidationError(EnvironmentNotReadyError):
    """A model exists but cannot serve the step (an embedding model, not loaded when required)."""

    default_hint = (
        "`lmflow models` shows each model's type and whether it is loaded; "
        "--load loads the workflow's models up front"
    )


class MCPServerError(EnvironmentNotReadyError):
    """An MCP server would not start, or lacks a tool the workflow needs."""

    default_hint = (
        "`lmflow tools FILE` starts the servers alone and shows why one fails; a stdio "
        "server's stderr is kept as mcp-NAME.stderr.log in the run directory"
    )


class ToolStepsInvalidError(MCPServerError):
    """A `tool:` step names a tool its server lacks, or passes arguments the tool does not
    take; `problems` holds every finding (found once the servers listed their tools)."""

    def __init__(self, problems: Sequence[object], workflow_path: str) -> None:
        super().__init__(
            f"{len(problems)} problem(s) with tool steps or server prompts against what their "
            "MCP servers offer; "
            "no step was run",
            hint=f"`lmflow tools {shlex.quote(workflow_path)}` lists each tool with its arguments",
        )
        self.problems = list(problems)


class ReplayMissError(EnvironmentNotReadyError):
    """A replayed run asked for something the cassette does not hold."""

    default_hint = "re-record the cassette: lmflow run WORKFLOW --record CASSETTE --rerecord"


class CassetteError(EnvironmentNotReadyError):
    """A cassette file cannot be read or would be overwritten."""

    default_hint = "re-record the cassette: lmflow run WORKFLOW --record CASSETTE --rerecord"


# --- exit code 1: the run executed and a step failed ---------------------------------------


class ToolExecutionError(LmflowError):
    """A direct tool call (a `tool:` step) failed."""

    default_hint = (
        "`lmflow tools FILE` lists each server's tools with their parameters: check the "
        "step's `tool:` name and its `with:` arguments"
    )


class StepFailedError(LmflowError):
    """A step failed: rounds ran out, timeout, output did not match its schema, a server died."""


# --- 128 + signal number: a stop signal ended the command ---------------------------------


class Stopped(KeyboardInterrupt):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP stopped the command. A KeyboardInterrupt, so every
    clean-up written for Ctrl-C runs for the other two as well."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def reason(self) -> str:
        """The wording of the run log and the terminal."""
        if self.signum == signal.SIGINT:
            return "interrupted"
        return f"terminated by {signal.Signals(self.signum).name}"

"""`lmflow validate`: check workflow files without running a step."""

from __future__ import annotations

import fnmatch
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import click

from ..errors import EXIT_ENVIRONMENT, EXIT_INVALID, EXIT_OK, EnvironmentNotReadyError
from ..spec import Problem, Workflow, check_file
from ..spec.side_effects import RULE as SHARED_WRITER_RULE
from . import _options as options

WORKFLOW_SUFFIXES = (".yaml", ".yml")


SNAPSHOT_DIR = "__snapshots__"
"""Where syrupy keeps its snapshot files: never workflows."""

CASSETTE_HEADER = "# lmflow cassette"
_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_]+):", re.MULTILINE)


def workflow_files(targets: Iterable[Path]) -> list[Path]:
    """Files named directly, plus every *.yaml / *.yml below named directories."""
    files: list[Path] = []
    for target in targets:
        if target.is_dir():
            files.extend(
                sorted(
                    p
                    for p in target.rglob("*")
                    if p.suffix in WORKFLOW_SUFFIXES
                    and p.is_file()
                    and not any(
                        part.startswith(".") or part == "node_modules"
                        for part in p.relative_to(target).parts
                    )
                )
            )
        else:
            files.append(target)
    return files


def skip_reason(path: Path, excludes: Sequence[str]) -> str | None:
    """Why a YAML file is not checked as a workflow: it matches an --exclude glob, is a syrupy
    snapshot, or is an lmflow cassette (its header, or `exchanges:` without `steps:`)."""
    if any(
        fnmatch.fnmatch(path.as_posix(), glob) or fnmatch.fnmatch(path.name, glob)
        for glob in excludes
    ):
        return "excluded"
    if SNAPSHOT_DIR in path.parts:
        return "snapshot"
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            head = file.read(64 * 1024)
    except OSError:
        return None  # the check reports an unreadable file
    keys = set(_TOP_LEVEL_KEY.findall(head))
    if head.startswith(CASSETTE_HEADER) or ("exchanges" in keys and "steps" not in keys):
        return "cassette"
    return None


_SKIP_LABELS = {"cassette": "cassette(s)", "snapshot": "snapshot(s)", "excluded": "excluded"}


def _skipped_summary(skipped: Sequence[tuple[Path, str]]) -> str:
    counts = Counter(reason for _, reason in skipped)
    kinds = ", ".join(f"{n} {_SKIP_LABELS[reason]}" for reason, n in sorted(counts.items()))
    return f"; {len(skipped)} skipped ({kinds})" if skipped else ""


def _escape_github(text: str, *, property_value: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def render_github(problem: Problem) -> str:
    """A GitHub Actions workflow command, so the problem shows on the pull request's diff."""
    level = "error" if problem.is_error else "warning"
    message = problem.message + (f" (hint: {problem.hint})" if problem.hint else "")
    props = (
        f"file={_escape_github(problem.path, property_value=True)},line={problem.line},"
        f"col={problem.col},title={_escape_github(problem.rule, property_value=True)}"
    )
    return f"::{level} {props}::{_escape_github(message)}"


@click.command("validate")
@click.argument("targets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="How to print the problems.",
)
@click.option("--offline", is_flag=True, help="Skip the model check against the LM Studio server.")
@click.option(
    "--servers",
    "check_servers",
    is_flag=True,
    help="Also start the MCP servers, check tool steps, allow-lists and server prompts against "
    "what they offer, and stop them.",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="GLOB",
    help="Skip files whose path or name matches (repeatable), e.g. 'tests/data/*'.",
)
@options.inputs
@options.model_check
def command(
    targets: Sequence[Path],
    output_format: str,
    offline: bool,
    check_servers: bool,
    excludes: tuple[str, ...],
    pairs: tuple[str, ...],
    inputs_file: Path | None,
    base_url: str | None,
    refresh: bool,
    cache_ttl: float | None,
    require_loaded: bool,
    load_models: bool,
) -> int:
    """Check workflow files (or every *.yaml under a directory) without running them.

    Files that are lmflow cassettes or syrupy snapshots (under __snapshots__/), and files
    matching an --exclude glob, are skipped and counted in the summary.

    Checks YAML syntax, the schema, every reference and template, and, unless --offline,
    every model against the LM Studio server. With --servers, also starts each workflow's MCP
    servers (with the -i/--inputs values) and checks every `tool:` step's tool and arguments
    and every server prompt (`prompt_from:`, `system_from:`).
    Exit code 0 when all files are valid, 2 when any is not, 3 when the server is unreachable,
    a model is missing or a tool step does not fit its tool.
    """
    found = workflow_files(targets)
    if not found:
        raise click.UsageError(
            "no workflow files (*.yaml, *.yml) found in: " + ", ".join(map(str, targets))
        )
    reasons = {path: skip_reason(path, excludes) for path in found}
    skipped = [(path, reason) for path, reason in reasons.items() if reason is not None]
    files = [path for path, reason in reasons.items() if reason is None]
    results: list[tuple[Path, list[Problem]]] = []
    workflows: list[Workflow] = []
    for path in files:
        workflow, problems = check_file(path)
        results.append((path, problems))
        if workflow is not None:
            workflows.append(workflow)
    invalid = any(any(p.is_error for p in problems) for _, problems in results)
    environment_failed = False
    if not offline and workflows:
        from ..preflight import check_workflows_online

        try:
            findings = check_workflows_online(
                workflows,
                base_url=base_url,
                refresh=refresh,
                cache_ttl=cache_ttl,
                require_loaded=require_loaded,
                load=load_models,
            )
        except EnvironmentNotReadyError:
            # The server is down: still show what the files themselves got wrong. An invalid
            # file is the more precise verdict (exit 2); otherwise the error explains exit 3.
            _print(results, skipped, output_format)
            if invalid:
                return EXIT_INVALID
            raise
        environment_failed |= _add_findings(results, findings)
    if check_servers and not invalid:
        findings = _server_findings(workflows, inputs_file, pairs)
        results = [
            (path, _by_tool_lists(problems, findings.get(str(path)))) for path, problems in results
        ]
        environment_failed |= _add_findings(results, findings)
    _print(results, skipped, output_format)
    if invalid:
        return EXIT_INVALID
    return EXIT_ENVIRONMENT if environment_failed else EXIT_OK


def _add_findings(
    results: list[tuple[Path, list[Problem]]], findings: dict[str, list[Problem]]
) -> bool:
    """Add each file's findings from a check against the environment; True when any is an
    error (exit 3)."""
    failed = False
    for path, problems in results:
        extra = findings.get(str(path), [])
        problems.extend(extra)
        failed |= any(p.is_error for p in extra)
    return failed


def _by_tool_lists(problems: list[Problem], found: list[Problem] | None) -> list[Problem]:
    """A file's offline problems without the warnings about unordered writers when the
    check against its servers judged those again, by the tools they listed."""
    if found is None or any(problem.is_error for problem in found):
        return problems
    return [problem for problem in problems if problem.rule != SHARED_WRITER_RULE]


def _server_findings(
    workflows: Sequence[Workflow], inputs_file: Path | None, pairs: Sequence[str]
) -> dict[str, list[Problem]]:
    """Tool-step problems per workflow path, each workflow's servers started and stopped."""
    from .. import signals
    from ..runtime import check_servers, read_inputs

    raw_inputs = read_inputs(inputs_file, pairs)
    return {
        str(workflow.path): signals.run(check_servers(workflow, raw_inputs))
        for workflow in workflows
    }


def _print(
    results: list[tuple[Path, list[Problem]]],
    skipped: Sequence[tuple[Path, str]],
    output_format: str,
) -> None:
    if output_format == "json":
        payload = {
            "valid": not any(p.is_error for _, problems in results for p in problems),
            "files": [
                {
                    "path": str(path),
                    "valid": not any(p.is_error for p in problems),
                    "problems": [p.as_dict() for p in problems],
                }
                for path, problems in results
            ],
        }
        if skipped:  # the key is new: absent when nothing was skipped, as before
            payload["skipped"] = [{"path": str(p), "reason": why} for p, why in skipped]
        click.echo(json.dumps(payload, indent=2))
        return
    render = render_github if output_format == "github" else Problem.format
    for _, problems in results:
        for problem in problems:
            click.echo(render(problem))
    if output_format == "text":
        errors = sum(p.is_error for _, ps in results for p in ps)
        warnings = sum(not p.is_error for _, ps in results for p in ps)
        bad = sum(any(p.is_error for p in ps) for _, ps in results)
        summary = (
            f"{len(results)} file(s) checked: {len(results) - bad} without errors, {bad} with "
            f"errors ({errors} error(s), {warnings} warning(s))" + _skipped_summary(skipped)
        )
        click.secho(summary, err=True, fg="red" if bad else "green")

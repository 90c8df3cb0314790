"""`lmflow validate`: check workflow files without running a step."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import click

from ..errors import EXIT_ENVIRONMENT, EXIT_INVALID, EXIT_OK, EnvironmentNotReadyError
from ..spec import Problem, Workflow, check_file
from . import _options as options

WORKFLOW_SUFFIXES = (".yaml", ".yml")


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
@options.model_check
def command(
    targets: Sequence[Path],
    output_format: str,
    offline: bool,
    base_url: str | None,
    refresh: bool,
    cache_ttl: float | None,
    require_loaded: bool,
    load_models: bool,
) -> int:
    """Check workflow files (or every *.yaml under a directory) without running them.

    Checks YAML syntax, the schema, every reference and template, and, unless --offline,
    every model against the LM Studio server. Exit code 0 when all files are valid, 2 when
    any is not, 3 when the server is unreachable or a model is missing.
    """
    files = workflow_files(targets)
    if not files:
        raise click.UsageError(
            "no workflow files (*.yaml, *.yml) found in: " + ", ".join(map(str, targets))
        )
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
            _print(results, output_format)
            if invalid:
                return EXIT_INVALID
            raise
        for path, problems in results:
            extra = findings.get(str(path), [])
            problems.extend(extra)
            environment_failed |= any(p.is_error for p in extra)
    _print(results, output_format)
    if invalid:
        return EXIT_INVALID
    return EXIT_ENVIRONMENT if environment_failed else EXIT_OK


def _print(results: list[tuple[Path, list[Problem]]], output_format: str) -> None:
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
            f"errors ({errors} error(s), {warnings} warning(s))"
        )
        click.secho(summary, err=True, fg="red" if bad else "green")

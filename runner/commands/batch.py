"""`lmflow batch`: run a workflow once per row of a JSONL or CSV file (docs/batch.md)."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import EXIT_OK, EXIT_STEP_FAILED, ConfigurationError
from ..spec import load_workflow
from ._batch_progress import BatchProgress
from ._options import no_log, quiet

if TYPE_CHECKING:
    from ..batch_where import Where


@click.command("batch")
@click.argument("workflow_file", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("rows_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Write one JSON line per row here; the journal goes beside it (OUT.journal).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Rows running at once over all hosts (default: every host's slots).",
)
@click.option(
    "--slots",
    type=click.IntRange(min=1),
    default=None,
    help="Rows each host runs at once (default: the parallel slots LM Studio reports for the "
    "workflow's loaded models, else 4).",
)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="INPUT=COLUMN",
    help="Fill INPUT from COLUMN of ROWS (repeatable; default: the column named as the input).",
)
@click.option(
    "--base-url",
    "base_urls",
    multiple=True,
    metavar="URL",
    help="An LM Studio server (repeatable: rows go to a host with a free slot, those with the "
    "models loaded first). Default: LMFLOW_BASE_URL, the workflow's lmstudio.hosts, its "
    "lmstudio.base_url, http://localhost:1234.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the batch in OUT: run only the rows missing or not succeeded.",
)
@click.option(
    "--record",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    metavar="DIR",
    help="Save each row's exchanges to a cassette of its own in DIR (for --replay in CI).",
)
@click.option(
    "--replay",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    metavar="DIR",
    help="Answer each row from its cassette in DIR, without LM Studio; a row without one "
    "is an error.",
)
@click.option("--rerecord", is_flag=True, help="Let --record replace a row's cassette.")
@click.option(
    "--dask",
    "dask_address",
    metavar="ADDRESS",
    help="Run the rows on the workers of this Dask scheduler (tcp://host:8786); needs "
    "pip install 'lmflow-runner[dask]'.",
)
@no_log
@quiet
def command(
    workflow_file: Path,
    rows_file: Path,
    out: Path,
    concurrency: int | None,
    slots: int,
    mapping: tuple[str, ...],
    base_urls: tuple[str, ...],
    resume: bool,
    record: Path | None,
    replay: Path | None,
    rerecord: bool,
    dask_address: str | None,
    no_log: bool,
    quiet: bool,
) -> int:
    """Run WORKFLOW_FILE once per row of ROWS_FILE (JSONL, or CSV with a header).

    Every row is checked against the workflow's inputs before any runs; a bad row is
    written as `invalid` and the others run. Exit code 0 when every row succeeded, 1 when
    any did not, 2 for bad arguments (or a --resume whose files changed), 3 when no LM
    Studio host is left, 130 on Ctrl-C.

    \b
    lmflow batch triage.yaml issues.jsonl -o triaged.jsonl --concurrency 8
    lmflow batch triage.yaml issues.csv -o triaged.jsonl --map text=body --resume
    lmflow batch triage.yaml issues.jsonl -o out.jsonl --replay cassettes/triage/
    """
    from .. import signals
    from ..api import RunOptions
    from ..batch import Batch, run_batch
    from ..batch_hosts import choose_hosts
    from ..batch_rows import parse_mapping
    from ..lmstudio_server import BASE_URL_ENV

    if record is not None and replay is not None:
        raise ConfigurationError("--record and --replay exclude each other")
    if rerecord and record is None:
        raise ConfigurationError("--rerecord needs --record DIR")
    if record is not None and record.exists() and not record.is_dir():
        # click's file_okay=False refuses a regular file, not /dev/null or a pipe
        raise ConfigurationError(
            f"--record {record} is not a directory",
            hint="name a directory (it is created if missing): one cassette per row goes in it",
        )
    if replay is not None and (base_urls or slots):
        raise ConfigurationError(
            "--base-url and --slots cannot be used with --replay",
            hint="a replay answers every row from its cassette and never asks LM Studio",
        )
    from ..batch_where import in_process

    where = in_process if dask_address is None else on_dask_cluster(dask_address)
    workflow = load_workflow(workflow_file)
    batch = Batch(
        workflow=workflow,
        rows=rows_file,
        out=out,
        mapping=parse_mapping(mapping, workflow.inputs),
        hosts=choose_hosts(base_urls, workflow, os.environ.get(BASE_URL_ENV)),
        slots=slots,
        concurrency=concurrency,
        resume=resume,
        options=RunOptions(write_log=not no_log),
        record=record,
        rerecord=rerecord,
        replay=replay,
        where=where,
    )
    progress = BatchProgress(rows_file, quiet)
    try:
        counts = signals.run(run_batch(batch, progress))
    finally:
        progress.close()
    total = sum(counts.values())
    not_ok = total - counts["succeeded"]
    if not quiet or not_ok:
        parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        click.echo(f"{total} rows: {parts or 'none'}; results in {out}", err=True)
    return EXIT_STEP_FAILED if not_ok else EXIT_OK


def on_dask_cluster(address: str) -> Where:
    """Rows on the Dask cluster at `address`; without Dask installed, a bad argument."""
    if importlib.util.find_spec("distributed") is None:
        raise ConfigurationError(
            "--dask needs Dask's distributed package: pip install 'lmflow-runner[dask]'",
            hint="install it where lmflow runs (and on every worker), then run this again",
        )
    from ..batch_dask import on_dask

    return functools.partial(on_dask, address)

"""`lmflow batch`: one workflow over every row of a dataset, through the public API only.

Rows are read twice as a stream: first every row is checked against the workflow's inputs
(a bad row is written as `invalid` before anything runs), then the good rows run, at most
`concurrency` at once, each on a free host slot (batch_hosts.py). Each finished row is one
line of OUT and one entry in the journal (batch_journal.py) that `--resume` continues from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import anyio
import anyio.lowlevel

from .api import RunOptions, check_inputs, run_workflow
from .ask_step import unanswered
from .batch_hosts import Hosts, NoHostLeft
from .batch_journal import Journal, journal_path
from .batch_rows import Row, file_digest, read_rows
from .errors import ConfigurationError, LLMConnectionError, LmflowError
from .spec.model import Workflow


@dataclass(frozen=True)
class RowOutcome:
    """How one row ended: one line of OUT."""

    line: int
    inputs: Mapping[str, Any]
    status: str
    """A run's status (`succeeded`, `failed`, `interrupted`, `error`), or `invalid`."""
    outputs: Mapping[str, Any] | None = None
    error: str | None = None
    run_id: str | None = None
    host: str | None = None
    duration: float = 0.0
    usage: Mapping[str, int] | None = None

    def as_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, default=str)


class Observer(Protocol):
    """What the command shows while a batch runs (progress, notes)."""

    def started(self, total: int, already_done: int) -> None: ...

    def finished(self, outcome: RowOutcome) -> None: ...

    def host_down(self, host: str | None, reason: str) -> None: ...


@dataclass(frozen=True)
class Batch:
    workflow: Workflow
    rows: Path
    out: Path
    mapping: Mapping[str, str] = field(default_factory=dict)
    hosts: Sequence[str | None] = (None,)
    slots: int = 4
    """Rows each host runs at once."""
    concurrency: int = 8
    """Rows running at once over all hosts."""
    resume: bool = False
    options: RunOptions = field(default_factory=RunOptions)
    """For every row's run; its `base_url` is the host's."""


async def run_batch(batch: Batch, observer: Observer) -> Counter[str]:
    """Run every row not done yet; how many rows ended in each status (this run's rows and
    the ones kept from before)."""
    _refuse_questions(batch)
    journal_file = journal_path(batch.out)
    if not batch.resume and (batch.out.exists() or journal_file.exists()):
        raise ConfigurationError(
            f"{batch.out} already exists",
            hint="pass --resume to continue that batch, or delete it (and "
            f"{journal_file.name}) to start over",
        )
    fresh = not journal_file.exists()
    journal = Journal(journal_file)
    try:
        journal.start(_fingerprint(batch), batch.resume)
        journal.forget_unfinished()
        _rewrite_out(batch.out, journal)
        with batch.out.open("a", encoding="utf-8") as out:
            return await _Run(batch, journal, out, observer).all_rows()
    except ConfigurationError:
        # ROWS turned out unreadable: a batch that never started leaves nothing to resume.
        journal.close()
        if fresh:
            journal_file.unlink(missing_ok=True)
            batch.out.unlink(missing_ok=True)
        raise
    finally:
        journal.close()


def _refuse_questions(batch: Batch) -> None:
    """A batch asks nobody: an `ask:` step without a default (or an answer in the options)
    would stop every row, so the batch does not start (exit 2)."""
    missing = unanswered(batch.workflow, batch.options.answers)
    if missing:
        names = ", ".join(repr(step.id) for step in missing)
        raise ConfigurationError(
            f"a batch asks nobody, and {'step' if len(missing) == 1 else 'steps'} {names} "
            f"{'asks' if len(missing) == 1 else 'ask'} a question without a default",
            hint="give each a `default:` (the answer every row takes), or run the workflow "
            "with lmflow run",
        )


def _fingerprint(batch: Batch) -> dict[str, str]:
    """What `--resume` must find unchanged, by the names its refusal gives."""
    mapping = json.dumps(sorted(batch.mapping.items()))
    return {
        "the workflow file": file_digest(batch.workflow.path),
        "the rows file": file_digest(batch.rows),
        "--map": mapping,
    }


def _rewrite_out(out: Path, journal: Journal) -> None:
    """OUT as the journal knows it: the kept rows, each once (a line written just before a
    crash, without its journal entry, is dropped: that row runs again)."""
    partial = out.with_name(out.name + ".partial")
    with partial.open("w", encoding="utf-8") as stream:
        for record in journal.records():
            stream.write(record + "\n")
    os.replace(partial, out)


class _Run:
    def __init__(self, batch: Batch, journal: Journal, out: IO[str], observer: Observer) -> None:
        self.batch = batch
        self.journal = journal
        self.out = out
        self.observer = observer
        self.hosts = Hosts(batch.hosts, batch.slots)
        self.stopped_by: NoHostLeft | None = None

    async def all_rows(self) -> Counter[str]:
        done = self.journal.done_lines()
        invalid = await self._check_all(done)
        running = anyio.Semaphore(self.batch.concurrency)
        async with anyio.create_task_group() as group:
            for row in self._rows():
                if row.line in done or row.line in invalid:
                    continue
                await running.acquire()
                group.start_soon(self._run_row, row, running, group.cancel_scope)
        if self.stopped_by is not None:
            raise self.stopped_by
        return self.journal.statuses()

    def _rows(self) -> Iterator[Row]:
        workflow = self.batch.workflow
        return read_rows(self.batch.rows, workflow.inputs, self.batch.mapping)

    async def _check_all(self, done: set[int]) -> set[int]:
        """Check every row before any runs; write the bad ones. Their line numbers."""
        invalid: set[int] = set()
        total = 0
        for row in self._rows():
            total += 1
            if total % 100 == 0:  # let Ctrl-C in while a long ROWS file is checked
                await anyio.lowlevel.checkpoint()
            if row.line in done:
                continue
            problem = row.problem or _problem(self.batch.workflow, row)
            if problem is not None:
                invalid.add(row.line)
                self._write(RowOutcome(row.line, row.inputs, "invalid", error=problem))
        self.observer.started(total, len(done))
        return invalid

    async def _run_row(self, row: Row, running: anyio.Semaphore, group: anyio.CancelScope) -> None:
        try:
            self._write(await self._on_some_host(row))
        except NoHostLeft as error:
            self.stopped_by = self.stopped_by or error
            group.cancel()
        finally:
            running.release()

    async def _on_some_host(self, row: Row) -> RowOutcome:
        """Run the row on a free host; a host that cannot be reached leaves the rotation and
        the row goes to another."""
        while True:
            async with self.hosts.slot() as host:
                options = dataclasses.replace(self.batch.options, base_url=host)
                try:
                    result = await run_workflow(self.batch.workflow, row.inputs, options)
                except LLMConnectionError as error:
                    if await self.hosts.take_out(host, error.message):
                        self.observer.host_down(host, error.message)
                    continue
                except LmflowError as error:
                    return RowOutcome(row.line, row.inputs, "error", error=error.message, host=host)
                if not result.ok and not await self.hosts.answers(host):
                    # The host went away during the row (its model list was cached, so the
                    # run's own check did not notice): another host runs the row again.
                    reason = f"stopped answering during row {row.line}"
                    if await self.hosts.take_out(host, reason):
                        self.observer.host_down(host, reason)
                    continue
            usage = result.usage
            return RowOutcome(
                line=row.line,
                inputs=dict(result.inputs),
                status=result.status,
                outputs=dict(result.outputs),
                error=result.error,
                run_id=result.run_id,
                host=host,
                duration=round(result.duration, 3),
                usage={
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                },
            )

    def _write(self, outcome: RowOutcome) -> None:
        """OUT first, then the journal: a crash in between leaves a line the journal lacks,
        which `--resume` drops and runs again."""
        record = outcome.as_json()
        self.out.write(record + "\n")
        self.out.flush()
        self.journal.record(outcome.line, outcome.status, record)
        self.observer.finished(outcome)


def _problem(workflow: Workflow, row: Row) -> str | None:
    try:
        check_inputs(workflow, row.inputs)
    except LmflowError as error:
        return error.message
    return None

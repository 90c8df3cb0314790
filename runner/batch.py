"""`lmflow batch`: one workflow over every row of a dataset, through the public API only.

Rows are read twice as a stream: first every row is checked against the workflow's inputs
(a bad row is written as `invalid` before anything runs), then the good rows run, at most
`concurrency` at once, each on a free host slot (batch_hosts.py), or each from its own
cassette (`--replay DIR`). Each finished row is one line of OUT and one entry in the journal
(batch_journal.py) that `--resume` continues from. Where a row runs, in this process or on a
Dask worker, is `Batch.where` (batch_where.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import anyio
import anyio.lowlevel

from .api import RunOptions, check_inputs
from .ask_step import unanswered
from .batch_hosts import DEFAULT_SLOTS, Host, HostChoice, Hosts, NoHostLeft, survey
from .batch_journal import Journal, journal_path
from .batch_rows import Row, file_digest, read_rows
from .batch_where import RowRun, Rows, Where, in_process
from .errors import ConfigurationError, LmflowError
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
    worker: str | None = None
    """The Dask worker that ran the row (None: the batch's own process)."""

    @classmethod
    def of(cls, line: int, run: RowRun, host: str | None) -> RowOutcome:
        return cls(
            line=line,
            inputs=run.inputs,
            status=run.status,
            outputs=run.outputs,
            error=run.error,
            run_id=run.run_id,
            host=host,
            duration=run.duration,
            usage=run.usage,
            worker=run.worker,
        )

    def as_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, default=str)


class Observer(Protocol):
    """What the command shows while a batch runs (progress, notes)."""

    def started(self, total: int, already_done: int) -> None: ...

    def finished(self, outcome: RowOutcome) -> None: ...

    def host_down(self, host: str | None, reason: str) -> None: ...

    def host_ready(self, host: Host) -> None: ...


@dataclass(frozen=True)
class Batch:
    workflow: Workflow
    rows: Path
    out: Path
    mapping: Mapping[str, str] = field(default_factory=dict)
    hosts: Sequence[HostChoice] = (HostChoice(None),)
    slots: int | None = None
    """Rows each host runs at once; None: what the host reports, else 4."""
    concurrency: int | None = None
    """Rows running at once over all hosts; None: every host's slots."""
    resume: bool = False
    options: RunOptions = field(default_factory=RunOptions)
    """For every row's run; its `base_url` is the host's, its `record` or `replay` the row's
    cassette."""
    record: Path | None = None
    """A folder: each row's exchanges go to a cassette of its own there (`cassette_for`)."""
    rerecord: bool = False
    """With `record`: a row's existing cassette is replaced."""
    replay: Path | None = None
    """A folder of such cassettes: each row answers from its own, and no host is asked."""
    where: Where = in_process
    """Where the rows run: this process, or a Dask cluster (batch_dask.on_dask)."""


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
    async with batch.where(batch.workflow) as rows:
        return await _journaled(batch, rows, observer)


async def _journaled(batch: Batch, rows: Rows, observer: Observer) -> Counter[str]:
    """The rows not done yet, run by `rows`, each written to OUT and the journal."""
    journal_file = journal_path(batch.out)
    fresh = not journal_file.exists()
    journal = Journal(journal_file)
    try:
        journal.start(_fingerprint(batch), batch.resume)
        journal.forget_unfinished()
        _rewrite_out(batch.out, journal)
        with batch.out.open("a", encoding="utf-8") as out:
            return await _Run(batch, rows, journal, out, observer).all_rows()
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
    def __init__(
        self, batch: Batch, rows: Rows, journal: Journal, out: IO[str], observer: Observer
    ) -> None:
        self.batch = batch
        self.rows = rows
        self.journal = journal
        self.out = out
        self.observer = observer
        self.hosts = Hosts(())
        self.stopped_by: NoHostLeft | None = None

    async def all_rows(self) -> Counter[str]:
        done = self.journal.done_lines()
        invalid = await self._check_all(done)
        concurrency = self.batch.concurrency
        if self.batch.replay is None:
            await self._survey()
            concurrency = concurrency or self.hosts.capacity
        running = anyio.Semaphore(concurrency or self.batch.slots or DEFAULT_SLOTS)
        async with anyio.create_task_group() as group:
            for row in self._rows():
                if row.line in done or row.line in invalid:
                    continue
                await running.acquire()
                group.start_soon(self._run_row, row, running, group.cancel_scope)
        if self.stopped_by is not None:
            raise self.stopped_by
        return self.journal.statuses()

    async def _survey(self) -> None:
        """Ask the hosts what they have before the first row; none left is exit 3."""
        hosts = await survey(self.batch.hosts, self.batch.workflow, self.batch.slots)
        self.hosts = Hosts(hosts)
        for host in hosts:
            if host.down is None:
                self.observer.host_ready(host)
            else:
                self.observer.host_down(host.url, host.down)
        if self.hosts.capacity == 0:
            raise self.hosts.none_left()

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
            if self.batch.replay is not None:
                outcome = await self._replayed(row, cassette_for(self.batch.replay, row))
            else:
                outcome = await self._on_some_host(row)
            self._write(outcome)
        except NoHostLeft as error:
            self.stopped_by = self.stopped_by or error
            group.cancel()
        finally:
            running.release()

    async def _replayed(self, row: Row, cassette: Path) -> RowOutcome:
        """The row answered from its own cassette; a row without one is an error that says
        how to record it."""
        if not cassette.is_file():
            error = (
                f"no cassette for this row: {cassette} (record it with `lmflow batch ... "
                f"--record {cassette.parent}` against LM Studio)"
            )
            return RowOutcome(row.line, row.inputs, "error", error=error)
        options = dataclasses.replace(self.batch.options, replay=cassette)
        return RowOutcome.of(row.line, await self.rows.run(row.inputs, options), None)

    async def _on_some_host(self, row: Row) -> RowOutcome:
        """Run the row on a free host; a host that cannot be reached leaves the rotation and
        the row goes to another."""
        options = self.batch.options
        if self.batch.record is not None:
            cassette = cassette_for(self.batch.record, row)
            options = dataclasses.replace(options, record=cassette, rerecord=self.batch.rerecord)
        while True:
            async with self.hosts.slot() as host:
                run = await self.rows.run(row.inputs, host.choice.aim(options))
                if run.unreachable:
                    reason = run.error or "cannot be reached"
                    if await self.hosts.take_out(host, reason):
                        self.observer.host_down(host.url, reason)
                    continue
                if run.status == "error":  # the environment was not ready: no use elsewhere
                    return RowOutcome.of(row.line, run, host.url)
                if run.status != "succeeded" and not await self.hosts.answers(host):
                    # The host went away during the row (its model list was cached, so the
                    # run's own check did not notice): another host runs the row again.
                    reason = f"stopped answering during row {row.line}"
                    if await self.hosts.take_out(host, reason):
                        self.observer.host_down(host.url, reason)
                    continue
                self.hosts.served(host)
            return RowOutcome.of(row.line, run, host.url)

    def _write(self, outcome: RowOutcome) -> None:
        """OUT first, then the journal: a crash in between leaves a line the journal lacks,
        which `--resume` drops and runs again."""
        record = outcome.as_json()
        self.out.write(record + "\n")
        self.out.flush()
        self.journal.record(outcome.line, outcome.status, record)
        self.observer.finished(outcome)


def cassette_for(folder: Path, row: Row) -> Path:
    """A row's own cassette in `folder`, named by the row's inputs (not its line): rows added,
    moved or removed leave the other rows' cassettes valid."""
    canonical = json.dumps(row.inputs, sort_keys=True, ensure_ascii=False, default=str)
    return folder / f"row-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}.yaml"


def _problem(workflow: Workflow, row: Row) -> str | None:
    try:
        check_inputs(workflow, row.inputs)
    except LmflowError as error:
        return error.message
    return None

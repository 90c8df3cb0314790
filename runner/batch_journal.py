"""The journal of `lmflow batch`: a SQLite file beside OUT, the truth about which rows are done.

Every finished row is committed here after its line reached OUT, so a crash or Ctrl-C keeps
every finished row. `--resume` rewrites OUT from the journal (dropping failed rows and any
line written after the last commit) and then runs only the rows the journal lacks.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigurationError

DONE = ("succeeded", "invalid")
"""Statuses `--resume` keeps; any other row runs again (an invalid row would stay invalid
while ROWS is unchanged, which the fingerprint guarantees)."""


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal")


class Journal:
    """Row statuses and OUT records by line number, plus what the batch was started with."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS rows "
                "(line INTEGER PRIMARY KEY, status TEXT NOT NULL, record TEXT NOT NULL)"
            )
            self._db.commit()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise ConfigurationError(
                f"{path} is not a batch journal ({error})",
                hint="delete it (and OUT) to start the batch over, or choose another -o",
            ) from None

    def close(self) -> None:
        self._db.close()

    def start(self, fingerprint: dict[str, str], resume: bool) -> None:
        """Record what this batch runs; with `resume`, refuse a batch started from other
        files (exit 2, saying which changed)."""
        known = dict(self._db.execute("SELECT key, value FROM meta"))
        if resume and known:
            changed = [key for key, value in fingerprint.items() if known.get(key) != value]
            if changed:
                raise ConfigurationError(
                    f"cannot resume: {' and '.join(changed)} changed since the batch in "
                    f"{self.path} started",
                    hint="run without --resume (after deleting OUT and its journal) to start "
                    "over, or restore the files",
                )
        self._db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", sorted(fingerprint.items())
        )
        self._db.commit()

    def record(self, line: int, status: str, record: str) -> None:
        """A finished row and its OUT line, committed at once."""
        self._db.execute("INSERT OR REPLACE INTO rows VALUES (?, ?, ?)", (line, status, record))
        self._db.commit()

    def statuses(self) -> Counter[str]:
        """How many rows ended in each status."""
        return Counter(dict(self._db.execute("SELECT status, COUNT(*) FROM rows GROUP BY status")))

    def forget_unfinished(self) -> None:
        """Drop the rows `--resume` runs again, so the journal holds only kept rows."""
        marks = ",".join("?" * len(DONE))
        self._db.execute(f"DELETE FROM rows WHERE status NOT IN ({marks})", DONE)
        self._db.commit()

    def done_lines(self) -> set[int]:
        return {line for (line,) in self._db.execute("SELECT line FROM rows")}

    def records(self) -> Iterator[str]:
        """The kept records as OUT lines, in line order, read a batch at a time."""
        cursor = self._db.execute("SELECT record FROM rows ORDER BY line")
        while chunk := cursor.fetchmany(500):
            for (record,) in chunk:
                yield record

"""The queue: jobs in memory, flushed to storage."""
from . import storage

_JOBS = []  # global state shared by every caller


def enqueue(job):
    _JOBS.append(job)
    try:
        storage.save(_JOBS)
    except Exception:
        pass  # TODO: report storage errors

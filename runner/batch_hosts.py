"""The LM Studio hosts of `lmflow batch` and their slots: each row takes a free slot on the
host with the most free slots; a host that cannot be reached leaves the rotation."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import anyio

from .errors import EnvironmentNotReadyError

PROBE_TIMEOUT = 5.0
"""Seconds a host gets to answer the probe after a row failed on it."""


class NoHostLeft(EnvironmentNotReadyError):
    """Every host was taken out of the rotation: no row can run (exit 3)."""


@dataclass
class _Host:
    url: str | None
    """None: the workflow's `lmstudio.base_url` or LMFLOW_BASE_URL, as `lmflow run` uses."""
    busy: int = 0
    down: str | None = None
    """Why the host left the rotation."""


class Hosts:
    def __init__(self, urls: Sequence[str | None], slots: int) -> None:
        self._hosts = [_Host(url) for url in urls]
        self._slots = slots
        self._changed = anyio.Condition()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[str | None]:
        """Wait for a free slot on a host still in the rotation; yield its URL."""
        async with self._changed:
            while True:
                host = self._freest()
                if host.busy < self._slots:
                    break
                await self._changed.wait()
            host.busy += 1
        try:
            yield host.url
        finally:
            async with self._changed:
                host.busy -= 1
                self._changed.notify_all()

    async def take_out(self, url: str | None, reason: str) -> bool:
        """Take a host out of the rotation; False when it already was (another row saw it)."""
        async with self._changed:
            host = next(h for h in self._hosts if h.url == url)
            first = host.down is None
            host.down = host.down or reason
            self._changed.notify_all()
        return first

    async def answers(self, url: str | None) -> bool:
        """Whether a host still answers HTTP at all (any status, even 401): a row that failed
        on a host that does not is not the row's fault. The default host (None) is assumed
        to answer: with nowhere else to go, its rows fail and `--resume` runs them again."""
        if url is None:
            return True
        import httpx

        try:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False) as client:
                await client.get(url.rstrip("/") + "/v1/models")
        except httpx.TransportError:
            return False
        return True

    def _freest(self) -> _Host:
        alive = [host for host in self._hosts if host.down is None]
        if not alive:
            reasons = "; ".join(f"{h.url or 'the default host'}: {h.down}" for h in self._hosts)
            raise NoHostLeft(
                f"no LM Studio host is left to run rows ({reasons})",
                hint="start LM Studio's server on a host (or fix --base-url), then run the "
                "same command with --resume",
            )
        return min(alive, key=lambda host: host.busy)

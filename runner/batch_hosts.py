"""The LM Studio hosts of `lmflow batch` and their slots.

Before the first row every host is asked for its models (`survey`): one that does not answer
leaves the rotation at once; a host's capacity is the `parallel` slots LM Studio 0.4 reports
for the loaded instances of the workflow's models (else `--slots`, else 4). Each row takes a
free slot, on a host that has the workflow's models loaded when one has room (a host without
them would load them first), else on the least busy. A host that stops answering mid-batch
leaves the rotation and its row goes to another.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import anyio

from .api import RunOptions, list_models, models_used
from .errors import EnvironmentNotReadyError, LmflowError
from .runtime import asks_models
from .spec.model import Workflow

PROBE_TIMEOUT = 5.0
"""Seconds a host gets to answer the probe after a row failed on it."""
DEFAULT_SLOTS = 4
"""Rows a host runs at once when neither `--slots` nor the host says: LM Studio's default
"Max Concurrent Predictions"."""


class NoHostLeft(EnvironmentNotReadyError):
    """Every host was taken out of the rotation: no row can run (exit 3)."""


@dataclass(frozen=True)
class HostChoice:
    """A server rows may go to, and who chose it."""

    url: str | None
    """None: the one server `lmflow run` would use (LMFLOW_BASE_URL, the workflow, the default)."""
    in_file: bool = False
    """Listed in the workflow's `lmstudio.hosts`: it gets the token only where the trust rule
    lets a URL from the file have it (docs/lmstudio.md)."""

    def aim(self, options: RunOptions) -> RunOptions:
        """A row's run options on this host: a host from the file stands in for the file's
        `base_url` (so the run treats it as the file's choice, not the user's)."""
        if self.in_file:
            return dataclasses.replace(options, file_host=self.url)
        return dataclasses.replace(options, base_url=self.url)


def choose_hosts(
    cli_urls: Sequence[str], workflow: Workflow, env_url: str | None
) -> list[HostChoice]:
    """Every `--base-url`; else LMFLOW_BASE_URL's one server; else the workflow's
    `lmstudio.hosts`; else the one server `lmflow run` would use."""
    if cli_urls:
        return [HostChoice(url) for url in dict.fromkeys(cli_urls)]
    if env_url or not workflow.lmstudio.hosts:
        return [HostChoice(None)]
    return [HostChoice(url, in_file=True) for url in workflow.lmstudio.hosts]


@dataclass
class Host:
    choice: HostChoice
    capacity: int = DEFAULT_SLOTS
    capacity_from: str = "default"
    """Where `capacity` came from: `--slots`, `parallel` (the server said) or `default`."""
    loaded: bool | None = False
    """It has the workflow's models loaded: rows start without a model load (None: the
    workflow asks no model, so the host was not asked)."""
    busy: int = 0
    down: str | None = None
    """Why the host left the rotation."""

    @property
    def url(self) -> str | None:
        return self.choice.url


async def survey(
    choices: Sequence[HostChoice], workflow: Workflow, slots: int | None
) -> list[Host]:
    """Ask every host, at once, for its models: capacity, models loaded, or why it is down.
    A workflow that asks no model anything (tool, command, ask steps) asks no host."""
    hosts = [Host(choice) for choice in choices]
    if not asks_models(workflow):
        for host in hosts:
            host.loaded = None
            if slots is not None:
                host.capacity, host.capacity_from = slots, "--slots"
        return hosts

    async def ask(host: Host) -> None:
        # Asked as a row's run will ask it: the same URL, token and trust rule.
        aimed = host.choice.aim(RunOptions())
        try:
            catalog = await list_models(
                aimed.base_url, refresh=True, settings=aimed.lmstudio(workflow)
            )
        except LmflowError as error:
            host.down = error.message
            return
        models = models_used(workflow, catalog)
        host.loaded = bool(models) and all(model.ready for model in models)
        reported = [model.parallel for model in models if model.parallel]
        if slots is not None:
            host.capacity, host.capacity_from = slots, "--slots"
        elif reported:
            host.capacity, host.capacity_from = min(reported), "parallel"

    async with anyio.create_task_group() as group:
        for host in hosts:
            group.start_soon(ask, host)
    return hosts


class Hosts:
    """The rotation: which host a row runs on, and which hosts are still in it."""

    def __init__(self, hosts: Sequence[Host]) -> None:
        self.all = list(hosts)
        self._changed = anyio.Condition()

    @property
    def capacity(self) -> int:
        """Rows that can run at once over the hosts in the rotation."""
        return sum(host.capacity for host in self.all if host.down is None)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Host]:
        """Wait for a free slot on a host still in the rotation."""
        async with self._changed:
            while (host := self._best()) is None:
                await self._changed.wait()
            host.busy += 1
        try:
            yield host
        finally:
            async with self._changed:
                host.busy -= 1
                self._changed.notify_all()

    def served(self, host: Host) -> None:
        """A row ran on the host: its models are loaded now, whatever the survey saw."""
        host.loaded = True

    async def take_out(self, host: Host, reason: str) -> bool:
        """Take a host out of the rotation; False when it already was (another row saw it)."""
        async with self._changed:
            first = host.down is None
            host.down = host.down or reason
            self._changed.notify_all()
        return first

    async def answers(self, host: Host) -> bool:
        """Whether a host still answers HTTP at all (any status, even 401): a row that failed
        on a host that does not is not the row's fault. The default host (None) is assumed
        to answer: with nowhere else to go, its rows fail and `--resume` runs them again."""
        if host.url is None:
            return True
        import httpx

        try:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False) as client:
                await client.get(host.url.rstrip("/") + "/v1/models")
        except httpx.TransportError:
            return False
        return True

    def _best(self) -> Host | None:
        """A host with a free slot, one with the models loaded first, then the least busy
        for its size; None when all are full."""
        alive = [host for host in self.all if host.down is None]
        if not alive:
            raise self.none_left()
        free = [host for host in alive if host.busy < host.capacity]
        if not free:
            return None
        return min(free, key=lambda host: (not host.loaded, host.busy / host.capacity))

    def none_left(self) -> NoHostLeft:
        reasons = "; ".join(f"{h.url or 'the default host'}: {h.down}" for h in self.all)
        return NoHostLeft(
            f"no LM Studio host is left to run rows ({reasons})",
            hint="start LM Studio's server on a host (or fix --base-url), then run the same "
            "command with --resume",
        )

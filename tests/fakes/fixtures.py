"""pytest fixtures around the fakes; tests/conftest.py imports them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .lmstudio import FakeLMStudio


@pytest.fixture
def fake_lmstudio() -> Iterator[FakeLMStudio]:
    """A running fake LM Studio 0.4 with the default models."""
    with FakeLMStudio() as server:
        yield server


@pytest.fixture
def make_fake_lmstudio() -> Iterator[Callable[..., FakeLMStudio]]:
    """Start fakes with any FakeLMStudio options; all are stopped after the test."""
    started: list[FakeLMStudio] = []

    def make(**options: Any) -> FakeLMStudio:
        server = FakeLMStudio(**options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def isolated_lmflow_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own model cache and none of the user's server settings."""
    cache = tmp_path_factory.mktemp("lmflow-cache")
    monkeypatch.setenv("LMFLOW_CACHE_DIR", str(cache))
    for name in (
        "LMFLOW_BASE_URL",
        "LMFLOW_TRUSTED_HOSTS",
        "LM_API_TOKEN",
        "LMFLOW_MODEL_CACHE_TTL",
    ):
        monkeypatch.delenv(name, raising=False)
    return cache

"""The disk cache of model catalogs: hit, expiry, refresh, keys, and several processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes.lmstudio import FakeLMStudio

from runner.catalog import (
    DEFAULT_TTL,
    Catalog,
    CatalogCache,
    ModelInfo,
    cache_dir,
    model_cache_ttl,
)
from runner.errors import EXIT_INVALID, ConfigurationError
from runner.lmstudio_server import ServerConfig
from runner.preflight import fetch_catalog

MODELS = "/api/v1/models"


def fetch(server: FakeLMStudio, **options: object) -> Catalog:
    return asyncio.run(fetch_catalog(ServerConfig(server.url), **options))  # type: ignore[arg-type]


# --- where and how long ----------------------------------------------------------------------


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LMFLOW_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("LMFLOW_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lmflow"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "lmflow"


def test_ttl_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert model_cache_ttl() == DEFAULT_TTL == 60
    monkeypatch.setenv("LMFLOW_MODEL_CACHE_TTL", "5")
    assert model_cache_ttl() == 5
    assert model_cache_ttl(0) == 0  # the command-line option wins


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_ttl_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LMFLOW_MODEL_CACHE_TTL", value)
    with pytest.raises(ConfigurationError, match="LMFLOW_MODEL_CACHE_TTL") as caught:
        model_cache_ttl()
    assert caught.value.exit_code == EXIT_INVALID


def test_catalog_survives_a_round_trip_through_json() -> None:
    catalog = Catalog(
        "http://x:1",
        "native-v1",
        (
            ModelInfo(
                "a/b",
                "vlm",
                "idle",
                100,
                50,
                True,
                ("a/b@q4",),
                "Q4",
                ("a/b",),
                "idle",
            ),
            ModelInfo("c"),
        ),
    )
    assert Catalog.from_dict(json.loads(json.dumps(catalog.as_dict()))) == catalog


# --- hit, expiry, refresh --------------------------------------------------------------------


def test_second_fetch_is_a_cache_hit(fake_lmstudio: FakeLMStudio) -> None:
    first = fetch(fake_lmstudio)
    second = fetch(fake_lmstudio)
    assert fake_lmstudio.count(MODELS) == 1
    assert second == first


def test_an_expired_entry_is_fetched_again(fake_lmstudio: FakeLMStudio) -> None:
    old = Catalog(fake_lmstudio.url, "openai", (ModelInfo("stale/model"),), time.time() - 120)
    with CatalogCache() as cache:
        cache.put(old)
    # Young enough for 600 s:
    assert fetch(fake_lmstudio, ttl=600).models == (ModelInfo("stale/model"),)
    assert fake_lmstudio.count(MODELS) == 0
    fresh = fetch(fake_lmstudio, ttl=60)
    assert fake_lmstudio.count(MODELS) == 1
    assert "stale/model" not in [m.id for m in fresh.models]
    with CatalogCache() as cache:
        assert cache.get(fake_lmstudio.url) == fresh  # the new list replaced the old one


def test_ttl_zero_always_asks_the_server(fake_lmstudio: FakeLMStudio) -> None:
    fetch(fake_lmstudio, ttl=0)
    fetch(fake_lmstudio, ttl=0)
    assert fake_lmstudio.count(MODELS) == 2


def test_refresh_bypasses_a_fresh_entry_and_updates_it(fake_lmstudio: FakeLMStudio) -> None:
    first = fetch(fake_lmstudio)
    fake_lmstudio.models[1].loaded = True
    refreshed = fetch(fake_lmstudio, refresh=True)
    assert fake_lmstudio.count(MODELS) == 2
    assert refreshed.models[1].state == "loaded" != first.models[1].state
    assert fetch(fake_lmstudio) == refreshed
    assert fake_lmstudio.count(MODELS) == 2


def test_entries_are_keyed_by_server_url_and_hold_no_token(
    make_fake_lmstudio, isolated_lmflow_env: Path
) -> None:
    a = make_fake_lmstudio(token="token-for-a-123")
    b = make_fake_lmstudio(api="openai")
    catalog_a = asyncio.run(fetch_catalog(ServerConfig(a.url, token="token-for-a-123")))
    catalog_b = fetch(b)
    with CatalogCache() as cache:
        assert cache.get(a.url) == catalog_a
        assert cache.get(b.url) == catalog_b
    stored = b"".join(p.read_bytes() for p in isolated_lmflow_env.rglob("*") if p.is_file())
    assert a.url.encode() in stored
    assert b"token-for-a-123" not in stored


def test_an_unusable_cache_dir_does_not_stop_the_fetch(
    fake_lmstudio: FakeLMStudio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LMFLOW_CACHE_DIR", str(blocker))
    assert len(fetch(fake_lmstudio).models) == 5
    assert len(fetch(fake_lmstudio).models) == 5
    assert fake_lmstudio.count(MODELS) == 2


def test_an_entry_from_another_version_is_ignored(fake_lmstudio: FakeLMStudio) -> None:
    with CatalogCache() as cache:
        cache._cache.set("catalog:" + fake_lmstudio.url, '{"some": "other shape"}')
        assert cache.get(fake_lmstudio.url) is None
    assert len(fetch(fake_lmstudio).models) == 5


# --- several processes -----------------------------------------------------------------------

CHILD = """
import asyncio, json, sys
from runner.catalog import CatalogCache
from runner.lmstudio_server import ServerConfig
from runner.preflight import fetch_catalog

url, refresh, reads = sys.argv[1], sys.argv[2] == "refresh", int(sys.argv[3])
catalog = asyncio.run(fetch_catalog(ServerConfig(url), refresh=refresh))
with CatalogCache() as cache:
    for _ in range(reads):
        assert cache.get(url) is not None
print(json.dumps({"fetched_at": catalog.fetched_at, "ids": [m.id for m in catalog.models]}))
"""


def child(url: str, *, refresh: bool = False, reads: int = 0) -> subprocess.Popen[str]:
    mode = "refresh" if refresh else "cached"
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, mode, str(reads)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def outcome(process: subprocess.Popen[str]) -> dict:
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    return json.loads(out)


def test_a_second_process_reads_what_the_first_stored(fake_lmstudio: FakeLMStudio) -> None:
    first = outcome(child(fake_lmstudio.url))
    second = outcome(child(fake_lmstudio.url))
    assert fake_lmstudio.count(MODELS) == 1
    assert second == first
    assert len(first["ids"]) == 5


def test_processes_writing_and_reading_at_once(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(delay=0.1)  # overlap the writes
    processes = [child(lm.url, refresh=True, reads=200) for _ in range(4)]
    results = [outcome(p) for p in processes]
    assert lm.count(MODELS) == 4
    assert all(r["ids"] == results[0]["ids"] for r in results)
    with CatalogCache() as cache:
        stored = cache.get(lm.url)
    assert stored is not None
    assert stored.fetched_at in {r["fetched_at"] for r in results}

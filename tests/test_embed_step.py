"""Embed steps (`embed:`): real `lmflow run`s against the fake LM Studio's /v1/embeddings,
the client on its own, the model check, record and replay, the run-log views, and the
template filters that compare vectors."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
import yaml
from fakes.lmstudio import EMBED_DIMENSIONS, FakeLMStudio, FakeModel, down_url, fake_embedding
from test_preflight import CATALOG, rules
from test_preflight import workflow as model_workflow
from test_run_cli import Run, lmflow, workflow

from runner import templating
from runner.chat import EmbedRequest
from runner.commands._console import ConsoleView
from runner.errors import LLMResponseError
from runner.lmstudio import LMStudioClient, RetryPolicy
from runner.preflight import check_models, model_routes
from runner.report import render_report
from runner.runlog import Event, snapshot_view
from runner.spec import check_file
from runner.spec.model import AgentStep, EmbedStep

EMBEDDER = "text-embedding-nomic-embed-text-v1.5"
DOCS = ["the queue stores jobs", "workers run the jobs", "a cat sat on the mat"]
BODY = f"""
    models:
      embedder: {EMBEDDER}
    inputs:
      docs: {{type: array, default: {json.dumps(DOCS)}}}
    steps:
      - id: docs
        model: embedder
        embed: "{{{{ inputs.docs }}}}"
        batch_size: 2
      - id: question
        model: embedder
        embed: "where does the queue store jobs?"
      - id: answer
        prompt: |
          {{% for doc in inputs.docs | nearest_by(steps.docs.output, steps.question.output, k=1) %}}
          nearest: {{{{ doc }}}}
          {{% endfor %}}
    outputs:
      docs: "{{{{ steps.docs.output }}}}"
      question: "{{{{ steps.question.output }}}}"
      nearest: "{{{{ steps.docs.output | nearest(steps.question.output, k=3) }}}}"
    """


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


# --- a run ---------------------------------------------------------------------------------


def test_a_text_gives_a_vector_and_a_list_gives_vectors_in_order(tmp_path: Path) -> None:
    with FakeLMStudio() as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, BODY), "--base-url", lm.url, "--json")
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout)
    outputs = result["outputs"]
    assert outputs["docs"] == [fake_embedding(text) for text in DOCS]
    assert outputs["question"] == fake_embedding("where does the queue store jobs?")
    assert len(outputs["question"]) == EMBED_DIMENSIONS
    assert outputs["nearest"] == [0, 1, 2]
    # the batches: two texts, then one; each request names the server's model id
    assert [r["input"] for r in lm.embed_requests if len(r["input"]) > 1] == [DOCS[:2]]
    assert sorted(len(r["input"]) for r in lm.embed_requests) == [1, 1, 2]
    assert {r["model"] for r in lm.embed_requests} == {EMBEDDER}
    # the nearest document reached the prompt
    assert "nearest: the queue stores jobs" in lm.chat_requests[0]["messages"][-1]["content"]
    # usage: one prompt token per word, as the fake counts
    steps = {s["id"]: s for s in result["steps"]}
    assert steps["docs"]["usage"]["prompt_tokens"] == sum(len(d.split()) for d in DOCS)
    assert steps["docs"]["model"] == EMBEDDER
    responses = [e for e in run.events() if e["type"] == "embed_response"]
    assert sorted((e["step"], e["batch"], e["vectors"]) for e in responses) == [
        ("docs", 0, 2),
        ("docs", 1, 1),
        ("question", 0, 1),
    ]
    assert all(e["dimension"] == EMBED_DIMENSIONS for e in responses)
    # the console shows counts, never the numbers
    assert "vector(s) of 128" in run.stderr
    assert str(outputs["question"][0]) not in run.stderr or outputs["question"][0] == 0.0
    assert "0.5773" not in run.stderr and "0.4082" not in run.stderr


def test_an_item_that_is_not_text_fails_the_step_clearly(tmp_path: Path) -> None:
    body = f"""
        steps:
          - id: vectors
            model: {EMBEDDER}
            embed: "{{{{ ['fine', {{'a': 1}}] }}}}"
        """
    with FakeLMStudio() as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url)
    assert run.code == 1
    (step,) = run.result()["steps"]
    assert step["error"] == "embed[1] is a dict, not a text"
    assert lm.embed_requests == []
    assert "Traceback" not in run.stderr


def test_for_each_embeds_each_item_and_an_empty_list_asks_nothing(tmp_path: Path) -> None:
    body = f"""
        steps:
          - id: each
            model: {EMBEDDER}
            for_each: ["alpha beta", "gamma"]
            embed: "{{{{ item }}}}"
          - id: none
            model: {EMBEDDER}
            embed: []
        outputs:
          each: "{{{{ steps.each.output }}}}"
          none: "{{{{ steps.none.output }}}}"
        """
    with FakeLMStudio() as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, "--json")
    assert run.code == 0, run.stderr
    outputs = json.loads(run.stdout)["outputs"]
    assert outputs["each"] == [fake_embedding("alpha beta"), fake_embedding("gamma")]
    assert outputs["none"] == []
    assert len(lm.embed_requests) == 2


# --- the model check -----------------------------------------------------------------------


def embed(index: int, model: str) -> EmbedStep:
    return EmbedStep(id=f"s{index}", index=index, model=model, embed="hello")


def test_an_embed_step_needs_an_embedding_model_and_is_told_which_there_are() -> None:
    (problem,) = check_models(model_workflow(embed(0, "qwen/qwen3-coder-30b")), CATALOG)
    assert rules([problem]) == [("not-embedding-model", "error", 10, 12)]
    assert "`embed:` steps need one" in problem.message
    assert problem.hint == f"embedding models on the server: {EMBEDDER}"
    chat_only = [m for m in CATALOG if m.type != "embedding"]
    (problem,) = check_models(model_workflow(embed(0, "qwen/qwen3-coder-30b")), chat_only)
    assert "lists no embedding model" in (problem.hint or "")


def test_an_embedding_model_serves_an_embed_step_and_is_routed() -> None:
    flow = model_workflow(
        embed(0, "nomic-embed"),
        AgentStep(id="s1", index=1, model="qwen3-coder-30b", prompt="hi"),
        models={"nomic-embed": EMBEDDER},
    )
    problems = check_models(flow, CATALOG)
    assert [p.rule for p in problems] == ["model-not-loaded"]  # a notice, not an error
    assert model_routes(flow, CATALOG) == {
        EMBEDDER: (EMBEDDER,),
        "qwen3-coder-30b": ("qwen/qwen3-coder-30b",),
    }


def test_a_chat_step_naming_an_embedding_model_is_told_embed_steps_take_it() -> None:
    step = AgentStep(id="s0", index=0, model=EMBEDDER, prompt="hi")
    (problem,) = check_models(model_workflow(step), CATALOG)
    assert problem.rule == "embedding-model"
    assert "only `embed:` steps take embedding models" in problem.message


def test_run_refuses_an_embed_step_with_a_chat_model(tmp_path: Path) -> None:
    body = """
        steps:
          - id: vectors
            model: qwen/qwen3-coder-30b
            embed: hello
        """
    with FakeLMStudio() as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url)
    assert run.code == 3, run.stderr
    assert "wf.yaml:7:12: model 'qwen/qwen3-coder-30b' is not an embedding model" in run.stderr
    assert EMBEDDER in run.stderr
    assert lm.embed_requests == []


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("{id: e, embed: hi}", "missing the required key 'model'"),
        ("{id: e, model: m, embed: hi, prompt: hello}", "prompt"),
        ("{id: e, model: m, embed: hi, batch_size: 0}", "batch_size"),
    ],
)
def test_validation_of_embed_steps(tmp_path: Path, step: str, expected: str) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(f"version: 1\nsteps:\n  - {step}\n")
    problems = [p for p in check_file(path)[1] if p.is_error]
    assert problems, "expected a problem"
    assert any(expected in p.message or expected in (p.hint or "") for p in problems), problems
    assert problems[0].line == 3


def test_a_step_reading_embed_output_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\nsteps:\n"
        "  - {id: later, model: m, embed: '{{ steps.docs.output | length | string }}'}\n"
        "  - {id: docs, model: m, embed: [a, '{{ inputs.x }}']}\n"
        "inputs: {x: {type: string}}\n"
    )
    problems = [p for p in check_file(path)[1] if p.is_error]
    assert [p.rule for p in problems] == ["forward-reference"]


# --- the client ----------------------------------------------------------------------------


def test_the_client_retries_a_busy_server_and_keeps_the_order() -> None:
    async def main(url: str) -> None:
        async with LMStudioClient(url, retry=RetryPolicy(base_delay=0.01)) as client:
            answer = await client.embed(EmbedRequest(EMBEDDER, ("b", "a")))
        assert answer.vectors == (tuple(fake_embedding("b")), tuple(fake_embedding("a")))
        assert answer.usage.prompt_tokens == 2
        assert answer.model == EMBEDDER

    with FakeLMStudio(fail_times=1) as lm:
        asyncio.run(main(lm.url))
    assert lm.count("/v1/embeddings") == 2


def test_the_client_says_what_the_server_refused() -> None:
    async def main(url: str) -> None:
        async with LMStudioClient(url) as client:
            with pytest.raises(LLMResponseError) as caught:
                await client.embed(EmbedRequest("qwen/qwen3-coder-30b", ("x",)))
        assert "answered 400 to POST /v1/embeddings" in caught.value.message
        assert "is not an embedding model" in caught.value.message

    with FakeLMStudio() as lm:
        asyncio.run(main(lm.url))


# --- record and replay ---------------------------------------------------------------------


def test_a_recorded_run_replays_its_vectors_without_a_server(tmp_path: Path) -> None:
    name = workflow(tmp_path, BODY)
    with FakeLMStudio() as lm:
        recorded = lmflow(
            tmp_path, "run", name, "--base-url", lm.url, "--record", "c.yaml", "--json", "--no-log"
        )
    assert recorded.code == 0, recorded.stderr
    text = (tmp_path / "c.yaml").read_text()
    cassette = yaml.safe_load(text)
    embeds = [e for e in cassette["exchanges"] if e["kind"] == "embed"]
    assert sorted(len(e["request"]["texts"]) for e in embeds) == [1, 1, 2]
    first = next(e for e in embeds if e["step"] == "question")
    assert first["response"]["vectors"] == [fake_embedding("where does the queue store jobs?")]
    # one line per vector, however long
    assert sum(line.startswith("    - [") for line in text.splitlines()) == 4
    replayed = replay_without_server(tmp_path, name)
    assert replayed.code == 0, replayed.stderr
    assert json.loads(replayed.stdout)["outputs"] == json.loads(recorded.stdout)["outputs"]


def replay_without_server(tmp_path: Path, name: str) -> Run:
    """`lmflow run NAME --replay c.yaml --json` where no LM Studio listens."""
    env = {"LMFLOW_BASE_URL": down_url()}
    return lmflow(tmp_path, "run", name, "--replay", "c.yaml", "--json", env=env)


def test_a_replay_of_other_texts_is_a_miss_naming_the_closest(tmp_path: Path) -> None:
    name = workflow(tmp_path, BODY)
    with FakeLMStudio() as lm:
        recorded = lmflow(tmp_path, "run", name, "--base-url", lm.url, "--record", "c.yaml")
    assert recorded.code == 0, recorded.stderr
    replayed = lmflow(
        tmp_path, "run", name, "--replay", "c.yaml", "-i", 'docs=["other", "texts", "now"]'
    )
    assert replayed.code == 3
    assert "the cassette holds no vectors of these 2 text(s)" in replayed.stderr
    assert "+texts: [other, texts]" in replayed.stderr


# --- the run-log views ---------------------------------------------------------------------


def test_the_snapshot_view_summarises_vectors() -> None:
    events = [
        {"type": "run_started", "steps": ["one", "many", "each", "chat"]},
        {"type": "step_started", "step": "one", "kind": "embed"},
        {"type": "step_finished", "step": "one", "output": [0.5, 0.5, 0.0]},
        {"type": "step_started", "step": "many", "kind": "embed"},
        {"type": "step_finished", "step": "many", "output": [[1.0, 0.0], [0.0, 1.0]]},
        {"type": "step_started", "step": "each", "kind": "embed"},
        {"type": "item_finished", "step": "each", "item": 0, "output": [[1.0, 0.0]]},
        {"type": "step_finished", "step": "each", "output": [[[1.0, 0.0]], [0.0, 1.0]]},
        {"type": "step_started", "step": "chat", "kind": "agent"},
        {"type": "step_finished", "step": "chat", "output": [0.5, 0.5]},
    ]
    outputs = [e.get("output") for e in snapshot_view(events) if "output" in e]
    assert outputs == [
        "<vector of 3>",
        "<2 vectors of 2>",
        "<1 vectors of 2>",
        ["<1 vectors of 2>", "<vector of 2>"],
        [0.5, 0.5],  # not an embed step: as it is
    ]


def test_the_console_tells_an_embed_response_in_counts() -> None:
    data = {"batch": 1, "vectors": 64, "dimension": 768, "usage": {"prompt_tokens": 900}}
    event = Event("embed_response", 1, 0.0, "run", "docs", data, item=2)
    line = ConsoleView().line(event)
    assert line == "    docs[2] batch 1: 64 vector(s) of 768, 900 tokens"


# --- the filters ---------------------------------------------------------------------------

VECTORS = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
CONTEXT = {"v": VECTORS, "q": [0.8, 0.6], "docs": ["a", "b", "c"]}


def render(text: str) -> object:
    return templating.render(text, CONTEXT)


def test_cosine_nearest_and_nearest_by() -> None:
    assert render("{{ v[0] | cosine(q) }}") == pytest.approx(0.8)
    assert render("{{ v[0] | cosine([0, 0]) }}") == 0.0
    assert render("{{ v | nearest(q, k=2) }}") == [2, 0]
    assert render("{{ v | nearest(q, k=10) }}") == [2, 0, 1]
    assert render("{{ docs | nearest_by(v, q, k=1) }}") == ["c"]
    scores = render("{{ v | similarities(q) }}")
    assert scores == pytest.approx([cosine(x, CONTEXT["q"]) for x in VECTORS])  # type: ignore[arg-type]
    # ties keep list order
    assert templating.render("{{ [[1, 0], [1, 0]] | nearest([1, 0], k=2) }}", {}) == [0, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{{ v[0] | cosine([1, 2, 3]) }}",
            "cosine: the vectors have different dimensions (2 and 3)",
        ),
        ("{{ v | nearest([1, 2, 3]) }}", "nearest: vector 0 has 2 dimensions, the query 3"),
        ("{{ docs[:2] | nearest_by(v, q) }}", "nearest_by: 2 items but 3 vectors"),
        ("{{ v | nearest(v) }}", "nearest: the query is a list of vectors, not one vector"),
        ("{{ v | nearest(q, k=0) }}", "nearest: k must be a whole number of at least 1, not 0"),
        ("{{ 'text' | cosine(q) }}", "cosine: the first vector is a str, not a vector"),
        ("{{ v | nearest('q') }}", "nearest: the query is a str, not a vector"),
    ],
)
def test_filters_refuse_what_is_not_comparable(text: str, message: str) -> None:
    with pytest.raises(templating.TemplateError) as caught:
        render(text)
    assert message in str(caught.value)


def test_the_validator_knows_the_filters(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\ndefaults: {model: m}\nsteps:\n"
        "  - {id: a, prompt: '{{ [[1]] | nearest([1]) }} {{ [1] | cosine([1]) }}'}\n"
    )
    assert [p for p in check_file(path)[1] if p.is_error] == []


def test_the_fake_serves_embeddings_only_for_embedding_models() -> None:
    with FakeLMStudio(models=[FakeModel("m"), FakeModel("e", type="embedding")]) as lm:
        import httpx

        ok = httpx.post(f"{lm.url}/v1/embeddings", json={"model": "e", "input": "x y"})
        refused = httpx.post(f"{lm.url}/v1/embeddings", json={"model": "m", "input": "x"})
    assert ok.json()["data"][0]["embedding"] == fake_embedding("x y")
    assert ok.json()["usage"]["prompt_tokens"] == 2
    assert refused.status_code == 400


def test_the_report_summarises_vectors_too(tmp_path: Path) -> None:
    with FakeLMStudio() as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, BODY), "--base-url", lm.url)
    assert run.code == 0, run.stderr
    page = render_report(run.run_dir)
    assert "&lt;3 vectors of 128&gt;" in page and "&lt;vector of 128&gt;" in page
    # the numbers appear once: in the workflow's own `docs` output, not in the step's
    assert page.count(str(max(fake_embedding(DOCS[0])))) == 1


def test_a_resumed_run_reuses_the_vectors(tmp_path: Path) -> None:
    name = workflow(tmp_path, BODY)
    with FakeLMStudio() as lm:
        first = lmflow(tmp_path, "run", name, "--base-url", lm.url, "--json")
        asked = len(lm.embed_requests)
        again = lmflow(tmp_path, "run", name, "--base-url", lm.url, "--json", "--resume", "last")
    assert (first.code, again.code) == (0, 0), again.stderr
    assert len(lm.embed_requests) == asked  # nothing embedded again
    assert json.loads(again.stdout)["outputs"] == json.loads(first.stdout)["outputs"]


def test_an_embed_step_that_outlasts_its_timeout_fails_saying_so(tmp_path: Path) -> None:
    body = f"""
        steps:
          - id: slow
            model: {EMBEDDER}
            embed: [a, b, c]
            timeout: 0.3
        """
    with FakeLMStudio(embed_delay=3) as lm:
        run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url)
    assert run.code == 1
    (step,) = run.result()["steps"]
    assert step["error"] == "no vectors for the 3 text(s) within the timeout of 0.3 s"
    assert "Traceback" not in run.stderr

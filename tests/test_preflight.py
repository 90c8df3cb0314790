"""The model check: pure checks on a workflow and a model list, then the async helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import pytest
from fakes.lmstudio import FakeLMStudio, down_url

from runner.catalog import Catalog, CatalogCache, ModelInfo
from runner.errors import (
    EXIT_ENVIRONMENT,
    LLMConnectionError,
    ModelNotFoundError,
    ModelValidationError,
    SourceLocation,
)
from runner.lmstudio_server import ServerConfig
from runner.preflight import (
    Match,
    check_models,
    check_workflows_online,
    ensure_models,
    match_model,
    verify_models,
)
from runner.spec.model import AgentStep, Defaults, LMStudioSettings, Step, ToolStep, Workflow
from runner.spec.problems import Problem
from runner.spec.source import Position, SourceMap

CATALOG = (
    ModelInfo("qwen/qwen3-coder-30b", state="loaded", tool_use=True, quantization="Q4_K_M"),
    ModelInfo("mistralai/magistral-small-2509", state="not-loaded", tool_use=True),
    ModelInfo("google/gemma-3-270m", state="idle", tool_use=False),
    ModelInfo("lmstudio-community/gemma-3-270m", state="not-loaded", tool_use=False),
    ModelInfo(
        "qwen/qwen3-8b",
        state="unknown",
        variants=("qwen/qwen3-8b@q4_k_m", "qwen/qwen3-8b@q8_0"),
    ),
    ModelInfo("meta-llama-3.1-8b-instruct@q4_k_m", state="not-loaded"),
    ModelInfo("meta-llama-3.1-8b-instruct@q8_0", state="loaded"),
    ModelInfo("text-embedding-nomic-embed-text-v1.5", type="embedding", state="not-loaded"),
)
PATH = Path("flows/triage.yaml")


def workflow(
    *steps: Step,
    models: dict[str, str] | None = None,
    default: str | None = None,
    tool_choice: str | None = None,
    base_url: str | None = None,
    path: Path = PATH,
) -> Workflow:
    """A workflow whose every model reference sits on its own line (line = 10 + step index)."""
    values = {("defaults", "model"): Position(3, 10), ("defaults", "tool_choice"): Position(4, 16)}
    values |= {("models", alias): Position(20 + i, 9) for i, alias in enumerate(models or {})}
    for step in steps:
        values[("steps", step.index, "model")] = Position(10 + step.index, 12)
        values[("steps", step.index, "mcp")] = Position(10 + step.index, 40)
        values[("steps", step.index, "tool_choice")] = Position(10 + step.index, 60)
    return Workflow(
        path=path,
        name="triage",
        lmstudio=LMStudioSettings(base_url=base_url),
        models=MappingProxyType(models or {}),
        defaults=Defaults(model=default, tool_choice=tool_choice),
        steps=steps,
        source=SourceMap(str(path), values=MappingProxyType(values)),
    )


def step(index: int, model: str | None = None, **fields: object) -> Step:
    return AgentStep(id=f"s{index}", index=index, model=model, prompt="hi", **fields)  # type: ignore[arg-type]


def rules(problems: Sequence[Problem]) -> list[tuple[str, str, int, int]]:
    return [(p.rule, p.severity, p.line, p.col) for p in problems]


# --- matching names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("qwen/qwen3-coder-30b", "qwen/qwen3-coder-30b"),
        ("qwen3-coder-30b", "qwen/qwen3-coder-30b"),  # without publisher
        ("Qwen/Qwen3-Coder-30B", "qwen/qwen3-coder-30b"),  # case
        ("qwen/qwen3-coder-30b@q4_k_m", "qwen/qwen3-coder-30b"),  # its quantization
        ("qwen3-8b@q8_0", "qwen/qwen3-8b"),  # a variant
        ("qwen/qwen3-coder-30b:2", "qwen/qwen3-coder-30b"),  # a second instance
        ("qwen3-coder-30b@q4_k_m:2", "qwen/qwen3-coder-30b"),
        ("meta-llama-3.1-8b-instruct@q4_k_m", "meta-llama-3.1-8b-instruct@q4_k_m"),
        ("meta-llama-3.1-8b-instruct", "meta-llama-3.1-8b-instruct@q8_0"),  # the loaded one
    ],
)
def test_names_lm_studio_accepts(name: str, expected: str) -> None:
    match = match_model(name, CATALOG)
    assert match.model is not None
    assert match.model.id == expected


@pytest.mark.parametrize(
    "name",
    ["qwen/qwen3-coder-3b", "qwen/qwen3-coder-30b@q8_0", "other/qwen3-coder-30b", "qwen3"],
)
def test_names_that_match_nothing(name: str) -> None:
    assert match_model(name, CATALOG) == Match(None)


def test_a_short_name_two_publishers_share_is_ambiguous() -> None:
    match = match_model("gemma-3-270m", CATALOG)
    assert match.model is None
    assert [m.id for m in match.candidates] == [
        "google/gemma-3-270m",
        "lmstudio-community/gemma-3-270m",
    ]


# --- check_models ----------------------------------------------------------------------------


def test_a_workflow_whose_models_are_all_there_has_no_problems() -> None:
    flow = workflow(step(0, "qwen/qwen3-coder-30b", mcp=("fs",)), step(1, "google/gemma-3-270m"))
    assert check_models(flow, CATALOG) == []


def test_a_missing_model_names_the_closest_and_lists_the_available() -> None:
    flow = workflow(step(0, "qwen/qwen3-coder-30b"), step(1, "qwen/qwen3-coder-3b"))
    (problem,) = check_models(flow, CATALOG, server="http://h:1")
    assert rules([problem]) == [("model-not-found", "error", 11, 12)]
    assert problem.path == str(PATH)
    assert problem.message == (
        "model 'qwen/qwen3-coder-3b' is not on http://h:1; did you mean 'qwen/qwen3-coder-30b'?"
    )
    assert problem.hint is not None
    assert problem.hint.startswith("available: qwen/qwen3-coder-30b, mistralai/")
    assert "text-embedding-nomic-embed-text-v1.5" in problem.hint


def test_closest_names_compare_without_the_publisher() -> None:
    (problem,) = check_models(workflow(step(0, "magistral-smal-2509")), CATALOG)
    assert "did you mean 'mistralai/magistral-small-2509'?" in problem.message


def test_an_empty_server_says_how_to_get_a_model() -> None:
    (problem,) = check_models(workflow(step(0, "qwen/qwen3-coder-30b")), [])
    assert "did you mean" not in problem.message
    assert "lms get" in (problem.hint or "")


def test_an_ambiguous_short_name_is_an_error() -> None:
    (problem,) = check_models(workflow(step(0, "gemma-3-270m")), CATALOG)
    assert problem.rule == "model-ambiguous"
    assert "google/gemma-3-270m, lmstudio-community/gemma-3-270m" in problem.message


def test_an_embedding_model_cannot_serve_a_step() -> None:
    (problem,) = check_models(workflow(step(0, "text-embedding-nomic-embed-text-v1.5")), CATALOG)
    assert rules([problem]) == [("embedding-model", "error", 10, 12)]
    assert "text-embedding" not in (problem.hint or "")  # the hint lists chat models only
    assert "qwen/qwen3-coder-30b" in (problem.hint or "")


def test_a_model_that_is_not_loaded_is_a_notice_unless_loaded_is_required() -> None:
    flow = workflow(step(0, "mistralai/magistral-small-2509"))
    (notice,) = check_models(flow, CATALOG)
    assert rules([notice]) == [("model-not-loaded", "warning", 10, 12)]
    assert "LM Studio will load it on first use" in notice.message
    (error,) = check_models(flow, CATALOG, require_loaded=True)
    assert rules([error]) == [("model-not-loaded", "error", 10, 12)]
    assert "lms load mistralai/magistral-small-2509" in (error.hint or "")


@pytest.mark.parametrize("name", ["google/gemma-3-270m", "qwen/qwen3-8b"])
def test_idle_and_unknown_states_are_not_reported(name: str) -> None:
    assert check_models(workflow(step(0, name)), CATALOG, require_loaded=True) == []


def test_tools_on_a_model_without_tool_use_is_a_warning_at_the_tools() -> None:
    flow = workflow(
        step(0, "google/gemma-3-270m", mcp=("fs",)),
        step(1, "google/gemma-3-270m", mcp=("fs",), tool_choice="required"),
        step(2, "google/gemma-3-270m", tool_choice="none"),  # no tools asked for
        step(3, "qwen/qwen3-8b", mcp=("fs",)),  # tool use unknown: no warning
        step(4, "qwen/qwen3-coder-30b", mcp=("fs",)),
    )
    problems = check_models(flow, CATALOG)
    assert rules(problems) == [
        ("no-tool-use", "warning", 10, 40),
        ("no-tool-use", "warning", 11, 40),
    ]
    assert "step 's0' offers tools" in problems[0].message


def test_no_tool_use_warning_where_no_tools_are_offered() -> None:
    flow = workflow(
        step(0, "google/gemma-3-270m", mcp=("fs",), tool_choice="none"),  # servers, no tools
        step(1, "google/gemma-3-270m", tool_choice="required"),  # no servers: no tools
    )
    assert check_models(flow, CATALOG) == []


def test_default_tool_choice_applies_only_to_steps_that_offer_tools() -> None:
    gemma = "google/gemma-3-270m"
    # Without `mcp:` the default tool_choice offers nothing.
    assert check_models(workflow(step(0), default=gemma, tool_choice="auto"), CATALOG) == []
    flow = workflow(step(0, mcp=("fs",)), default=gemma, tool_choice="required")
    assert rules(check_models(flow, CATALOG)) == [("no-tool-use", "warning", 10, 40)]
    flow = workflow(step(0, mcp=("fs",)), default=gemma, tool_choice="none")
    assert check_models(flow, CATALOG) == []


def test_aliases_and_defaults_are_checked_even_when_unused() -> None:
    flow = workflow(
        step(0, "coder"),
        step(1),
        models={"coder": "qwen/qwen3-coder-30b", "spare": "qwen/qwen3-codr-30b"},
        default="nope/missing",
    )
    assert rules(check_models(flow, CATALOG)) == [
        ("model-not-found", "error", 3, 10),  # defaults.model
        ("model-not-found", "error", 21, 9),  # the unused alias with a typo
    ]


def test_tool_steps_need_no_model() -> None:
    flow = workflow(ToolStep(id="read", index=0, tool="fs.read_text_file"))
    assert check_models(flow, []) == []


# --- ensure_models ---------------------------------------------------------------------------


def test_ensure_raises_model_not_found_with_everything_a_user_needs() -> None:
    flow = workflow(step(0, "qwen/qwen3-coder-30b"), step(1, "qwen/qwen3-coder-3b"))
    with pytest.raises(ModelNotFoundError) as caught:
        ensure_models(flow, CATALOG, server="http://h:1")
    error = caught.value
    assert error.exit_code == EXIT_ENVIRONMENT
    assert error.model == "qwen/qwen3-coder-3b"
    assert error.available == [m.id for m in CATALOG]
    assert error.closest == ["qwen/qwen3-coder-30b"]
    assert error.location == SourceLocation(str(PATH), 11, 12)
    assert error.message.startswith(f"{PATH}:11:12: model 'qwen/qwen3-coder-3b'")
    assert "did you mean 'qwen/qwen3-coder-30b'?" in error.message


def test_run_and_validate_word_a_missing_model_alike() -> None:
    many = (*CATALOG, *(ModelInfo(f"acme/model-{i:02}") for i in range(30)))
    flow = workflow(step(0, "qwen/qwen3-coder-3b"))
    (problem,) = check_models(flow, many, server="http://h:1")
    with pytest.raises(ModelNotFoundError) as caught:
        ensure_models(flow, many, server="http://h:1")
    assert caught.value.message == f"{PATH}:10:12: {problem.message}"
    assert caught.value.hint == problem.hint
    assert (problem.hint or "").endswith(f"and {len(many) - 25} more")  # 25 listed at most
    assert caught.value.available == [m.id for m in many]


def test_ensure_raises_model_validation_for_other_errors() -> None:
    with pytest.raises(ModelValidationError, match=r"triage.yaml:10:12: .*embedding model"):
        ensure_models(workflow(step(0, "text-embedding-nomic-embed-text-v1.5")), CATALOG)
    with pytest.raises(ModelValidationError, match="is not loaded"):
        flow = workflow(step(0, "mistralai/magistral-small-2509"))
        ensure_models(flow, CATALOG, require_loaded=True)


def test_ensure_returns_the_warnings() -> None:
    flow = workflow(step(0, "mistralai/magistral-small-2509"))
    assert rules(ensure_models(flow, CATALOG)) == [("model-not-loaded", "warning", 10, 12)]


# --- against a server ------------------------------------------------------------------------


def test_verify_models_loads_up_front(fake_lmstudio: FakeLMStudio) -> None:
    flow = workflow(step(0, "magistral-small-2509"), step(1, "qwen/qwen3-coder-30b"))
    server = ServerConfig(fake_lmstudio.url)
    warnings = asyncio.run(verify_models(flow, server, load=True, require_loaded=True))
    assert warnings == []
    loads = [r.body for r in fake_lmstudio.requests if r.path == "/api/v1/models/load"]
    assert loads == [{"model": "mistralai/magistral-small-2509"}]  # only the unloaded one


@pytest.mark.parametrize("option", ["load", "require_loaded"])
def test_load_and_require_loaded_judge_a_fresh_model_list(
    fake_lmstudio: FakeLMStudio, option: str
) -> None:
    flow = workflow(step(0, "mistralai/magistral-small-2509"))
    server = ServerConfig(fake_lmstudio.url)
    # A minute-old list said the model was loaded; LM Studio has unloaded it since.
    stale = Catalog(
        fake_lmstudio.url, "native-v1", (ModelInfo(flow.steps[0].model, state="loaded"),)
    )
    with CatalogCache() as cache:
        cache.put(stale)
    if option == "load":
        assert asyncio.run(verify_models(flow, server, load=True)) == []
        loads = [r.body for r in fake_lmstudio.requests if r.path == "/api/v1/models/load"]
        assert loads == [{"model": "mistralai/magistral-small-2509"}]
    else:
        with pytest.raises(ModelValidationError, match="is not loaded"):
            asyncio.run(verify_models(flow, server, require_loaded=True))
    assert fake_lmstudio.count("/api/v1/models") >= 1


def test_verify_models_raises_for_a_missing_model(fake_lmstudio: FakeLMStudio) -> None:
    flow = workflow(step(0, "qwen/qwen3-coder-3b"))
    with pytest.raises(ModelNotFoundError) as caught:
        asyncio.run(verify_models(flow, ServerConfig(fake_lmstudio.url)))
    assert fake_lmstudio.url in caught.value.message


def test_check_workflows_online_shares_one_catalog_per_server(
    make_fake_lmstudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = make_fake_lmstudio(), make_fake_lmstudio(api="v0")
    flows = [
        workflow(step(0, "qwen/qwen3-coder-30b"), base_url=a.url, path=Path("one.yaml")),
        workflow(step(0, "qwen/qwen3-coder-3b"), base_url=a.url, path=Path("two.yaml")),
        workflow(step(0, "mistralai/magistral-small-2509"), base_url=b.url, path=Path("3.yaml")),
    ]
    found = check_workflows_online(flows, refresh=True)
    assert {path: rules(problems) for path, problems in found.items()} == {
        "one.yaml": [],
        "two.yaml": [("model-not-found", "error", 10, 12)],
        "3.yaml": [("model-not-loaded", "warning", 10, 12)],
    }
    assert (a.count("/api/v1/models"), b.count("/api/v0/models")) == (1, 1)
    # --base-url overrides every workflow's server.
    check_workflows_online(flows, base_url=b.url)
    assert a.count("/api/v1/models") == 1


def test_an_unreachable_server_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFLOW_BASE_URL", down_url())
    with pytest.raises(LLMConnectionError, match="cannot reach LM Studio"):
        check_workflows_online([workflow(step(0, "x"))])

"""Before a run: does the server have every model the workflow can use, fit for its steps?

`check_models` is pure (a workflow and a model list in, Problems out) so `validate` can show
every finding with its file position; `ensure_models` turns the first error into the
exception `lmflow run` exits with. The async helpers fetch the model list through the disk
cache; they import the httpx client only when called.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .catalog import (
    CACHE_DIR_ENV,
    DEFAULT_TTL,
    CacheError,
    Catalog,
    CatalogCache,
    ModelInfo,
    cache_dir,
    model_cache_ttl,
    shared_cache,
)
from .errors import (
    AuthenticationError,
    LLMClientError,
    ModelNotFoundError,
    ModelValidationError,
    SourceLocation,
)
from .spec.model import AgentStep, EmbedStep, Step, Workflow, walk_steps
from .spec.problems import Problem, Severity
from .spec.source import Position

if TYPE_CHECKING:
    from .lmstudio import LMStudioClient
    from .lmstudio_server import ServerConfig, WithheldToken

# --- matching a workflow's model name to the catalog ---------------------------------------

_INSTANCE = re.compile(r"(?P<base>.+):(?P<n>\d+)")


@dataclass(frozen=True)
class Match:
    """The model a name refers to, or the several it could mean (then `model` is None)."""

    model: ModelInfo | None
    candidates: tuple[ModelInfo, ...] = ()


def _without_quant(model_id: str) -> str:
    return model_id.split("@", 1)[0]


def _short(model_id: str) -> str:
    return model_id.rsplit("/", 1)[-1]


def _has_quant(model: ModelInfo, quant: str) -> bool:
    suffix = "@" + quant
    names = (model.id, *model.variants)
    return (model.quantization or "").casefold() == quant or any(
        n.casefold().endswith(suffix) for n in names
    )


def match_model(name: str, models: Sequence[ModelInfo]) -> Match:
    """Resolve a model name the way LM Studio does.

    Accepted: the exact id; the id without its publisher (`qwen3-coder-30b` for
    `qwen/qwen3-coder-30b`) when only one publisher has it; a `@quant` suffix naming a
    quantization or variant of the model; an `:N` instance suffix (`model:2`). Case is
    ignored except for the exact id.
    """
    for model in models:
        if model.id == name:
            return Match(model)
    wanted = name.casefold()
    found = _INSTANCE.fullmatch(wanted)
    if found:
        wanted = found["base"]
    base, _, quant = wanted.partition("@")
    key = _without_quant if "/" in base else (lambda i: _short(_without_quant(i)))
    candidates = [m for m in models if key(m.id).casefold() == base]
    if quant:
        candidates = [m for m in candidates if _has_quant(m, quant)]
    exact = [m for m in candidates if m.id.casefold() == wanted]
    if len(exact) == 1:
        return Match(exact[0])
    if len({_without_quant(m.id) for m in candidates}) == 1:
        # Several quantizations of one model, listed as `id@quant`: LM Studio picks one.
        return Match(next((m for m in candidates if m.ready), candidates[0]))
    return Match(None, tuple(candidates))


def closest_names(name: str, models: Sequence[ModelInfo], limit: int = 3) -> list[str]:
    """Ids that look like `name` (compared whole and without publishers), best first; only
    those nearly as close as the best, so one obvious typo gets one suggestion."""

    def score(model: ModelInfo) -> float:
        whole = difflib.SequenceMatcher(None, name.casefold(), model.id.casefold()).ratio()
        short = difflib.SequenceMatcher(None, _short(name).casefold(), model.name.casefold())
        return max(whole, short.ratio())

    scored = sorted(((score(m), m.id) for m in models), key=lambda pair: -pair[0])
    if not scored or scored[0][0] < 0.6:
        return []
    best = scored[0][0]
    return [model_id for value, model_id in scored[:limit] if value >= max(0.6, best - 0.1)]


# --- the check ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Finding:
    problem: Problem
    model: str
    closest: tuple[str, ...] = ()


def _listing(ids: Sequence[str], limit: int = 25) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _wants_tools(
    workflow: Workflow, step: Step, here: tuple[str | int, ...]
) -> tuple[str | int, ...] | None:
    """Where a step offers the model tools, if it does: a step with `mcp:` whose tool_choice
    (its own, else the default) is not `none`. Without `mcp:` no tools are offered, whatever
    the tool_choice; `defaults.tool_choice` applies only to steps that offer tools."""
    if not isinstance(step, AgentStep) or not step.mcp:
        return None
    choice = workflow.defaults.tool_choice if step.tool_choice is None else step.tool_choice
    return None if choice == "none" else (*here, "mcp")


def _findings(
    workflow: Workflow,
    models: Sequence[ModelInfo],
    *,
    require_loaded: bool,
    server: str,
) -> list[_Finding]:
    path = str(workflow.path)
    found: list[_Finding] = []

    def add(
        at: Position,
        model: str,
        rule: str,
        message: str,
        hint: str | None,
        severity: Severity = "error",
        closest: Sequence[str] = (),
    ) -> None:
        problem = Problem(path, at.line, at.col, message, rule, hint, severity)
        found.append(_Finding(problem, model, tuple(closest)))

    ids = [m.id for m in models]
    chat_ids = [m.id for m in models if m.type != "embedding"]
    embedding_ids = [m.id for m in models if m.type == "embedding"]
    embedding = _embedding_references(workflow)
    resolved: dict[str, ModelInfo] = {}
    singles: dict[str, Position] = {}
    for candidates, at in workflow.model_references():
        if len(candidates) == 1:
            singles.setdefault(candidates[0], at)
            continue
        picked = _first_usable(candidates, models, embedding=candidates[0] in embedding)
        if picked is None:
            listed = ", ".join(map(repr, candidates))
            hint = f"available: {_listing(ids)}" if ids else "the server lists no models"
            add(at, candidates[0], "model-not-found", f"none of {listed} is on {server}", hint)
            continue
        name, chosen = picked
        resolved[candidates[0]] = chosen
        for skipped in candidates[: candidates.index(name)]:
            add(
                at,
                skipped,
                "model-fallback",
                f"model {skipped!r} is not usable on {server}; {chosen.id!r}, next in the "
                "list, answers instead",
                "`lmflow models` lists what the server has",
                "warning",
            )
        if chosen.state == "not-loaded" and name not in singles:
            singles[name] = at  # judged below like a single model: not loaded yet
    for name, at in singles.items():
        match = match_model(name, models)
        model = match.model
        if match.candidates:
            several = [m.id for m in match.candidates]
            add(
                at,
                name,
                "model-ambiguous",
                f"model {name!r} could mean several models on {server}: {_listing(several)}",
                f"write the full id, for example {several[0]!r}",
            )
        elif model is None:
            closest = closest_names(name, models)
            guess = f"; did you mean {' or '.join(map(repr, closest))}?" if closest else ""
            hint = (
                f"available: {_listing(ids)}"
                if ids
                else "the server lists no models: download one in LM Studio or with `lms get`"
            )
            message = f"model {name!r} is not on {server}{guess}"
            add(at, name, "model-not-found", message, hint, closest=closest)
        elif model.type == "embedding" and name not in embedding:
            add(
                at,
                name,
                "embedding-model",
                f"model {name!r} is an embedding model; steps need a chat model (only "
                "`embed:` steps take embedding models)",
                f"chat models on {server}: {_listing(chat_ids)}" if chat_ids else None,
            )
        elif model.type != "embedding" and name in embedding:
            add(
                embedding[name],
                name,
                "not-embedding-model",
                f"model {name!r} is not an embedding model; `embed:` steps need one",
                f"embedding models on {server}: {_listing(embedding_ids)}"
                if embedding_ids
                else f"{server} lists no embedding model: download one in LM Studio or with "
                "`lms get nomic-embed-text-v1.5`",
            )
        else:
            resolved[name] = model
            if model.state == "not-loaded" and require_loaded:
                message = f"model {model.id!r} is not loaded"
                hint = f"load it with `lms load {model.id}`, or pass --load"
                add(at, name, "model-not-loaded", message, hint)
            elif model.state == "not-loaded":
                message = f"model {model.id!r} is not loaded; LM Studio will load it on first use"
                hint = f"to load it now: `lms load {model.id}` (or --load)"
                add(at, name, "model-not-loaded", message, hint, "warning")

    residency = _residency(workflow, models, require_loaded=require_loaded)
    if residency is not None:
        at, message, hint = residency
        add(at, "", "model-residency", message, hint, "warning")
    for here, step in walk_steps(workflow.steps):
        model = resolved.get(workflow.step_model(step) or "")
        where = _wants_tools(workflow, step, here)
        if model is not None and model.tool_use is False and where is not None:
            add(
                workflow.source.position(where),
                model.id,
                "no-tool-use",
                f"step {step.id!r} offers tools, but model {model.id!r} is not trained for "
                "tool use",
                "it may answer in text instead of calling tools; `lmflow models` shows which "
                "models have tool use",
                "warning",
            )
    for model_id, at, message, hint, severity in _without_vision(workflow, models, server):
        add(at, model_id, "model-without-vision", message, hint, severity)
    return sorted(found, key=lambda f: (f.problem.line, f.problem.col))


def _embedding_references(workflow: Workflow) -> dict[str, Position]:
    """The model ids `embed:` steps name, each with where the first of them names it: a
    model a chat step uses too is blamed there, where an embedding model is wanted."""
    found: dict[str, Position] = {}
    for here, step in walk_steps(workflow.steps):
        if isinstance(step, EmbedStep):
            for model in workflow.model_candidates(step.model):
                found.setdefault(model, workflow.source.position((*here, "model")))
    return found


def _without_vision(
    workflow: Workflow, models: Sequence[ModelInfo], server: str
) -> list[tuple[str, Position, str, str, Severity]]:
    """The steps with `images:` whose model does not see images: an error naming the vision
    models the server has; a warning when the server does not say (a plain OpenAI-compatible
    one lists no model types)."""
    vision = [m.id for m in models if m.type == "vlm"]
    found: list[tuple[str, Position, str, str, Severity]] = []
    for here, step in walk_steps(workflow.steps):
        if not isinstance(step, AgentStep) or not step.images:
            continue
        chosen = _first_usable(workflow.model_candidates(workflow.model_reference(step)[0]), models)
        if chosen is None or chosen[1].type == "vlm":
            continue
        model = chosen[1]
        at = workflow.source.position((*here, "images"))
        if model.state == "unknown":
            message = (
                f"step {step.id!r} sends images, but {server} does not say whether model "
                f"{model.id!r} sees images"
            )
            hint = "if it is not a vision model, the server will refuse the request"
            found.append((model.id, at, message, hint, "warning"))
            continue
        message = f"step {step.id!r} sends images, but model {model.id!r} has no vision"
        hint = (
            f"vision models on {server}: {_listing(vision)}"
            if vision
            else f"{server} has no vision model: download one (e.g. `lms get qwen2.5-vl-7b`)"
        )
        found.append((model.id, at, message, hint, "error"))
    return found


def vision_models(workflow: Workflow, models: Sequence[ModelInfo]) -> set[str]:
    """The model names the workflow's requests carry whose model sees images: those steps
    are also shown the images their tools return."""
    return {
        candidates[0]
        for candidates, _ in workflow.model_references()
        if (chosen := _first_usable(candidates, models)) is not None and chosen[1].type == "vlm"
    }


def _first_usable(
    candidates: Sequence[str], models: Sequence[ModelInfo], *, embedding: bool = False
) -> tuple[str, ModelInfo] | None:
    """The first of a fallback list that names one chat model of the server (one embedding
    model, for a list of `embed:` steps)."""
    for name in candidates:
        model = match_model(name, models).model
        if model is not None and _fits(model, embedding):
            return name, model
    return None


def _fits(model: ModelInfo, embedding: bool) -> bool:
    """Whether `model` is the kind a reference wants: an embedding model or a chat model."""
    return (model.type == "embedding") == embedding


def models_to_run(workflow: Workflow, models: Sequence[ModelInfo]) -> list[ModelInfo]:
    """The model each reference of the workflow will use first: of a fallback list, the
    first the server has."""
    embedding = _embedding_references(workflow)
    chosen = (
        _first_usable(c, models, embedding=c[0] in embedding)
        for c, _ in workflow.model_references()
    )
    return list({found[1].id: found[1] for found in chosen if found is not None}.values())


def _residency(
    workflow: Workflow, models: Sequence[ModelInfo], *, require_loaded: bool
) -> tuple[Position, str, str] | None:
    """Where, what and the fix when the steps use several models that are not loaded: LM
    Studio keeps one JIT-loaded model by default and unloads it when another is asked for,
    so steps that alternate would load their models again and again."""
    unloaded: dict[str, Position] = {}
    for here, step in walk_steps(workflow.steps):
        if not isinstance(step, AgentStep):
            continue
        reference = workflow.model_reference(step)[0]
        found = _first_usable(workflow.model_candidates(reference), models)
        if found is not None and found[1].state == "not-loaded" and not require_loaded:
            at = workflow.source.position((*here, "model") if step.model is not None else here)
            unloaded.setdefault(found[1].id, at)
    if len(unloaded) < 2:
        return None
    names = ", ".join(map(repr, unloaded))
    return (
        list(unloaded.values())[1],
        f"the steps use {len(unloaded)} models that are not loaded ({names}); LM Studio keeps "
        "one just-in-time loaded model and unloads it when another is asked for, so they "
        "would be loaded again and again",
        "pass --load to load them up front (explicitly loaded models are not evicted), or "
        "load them with `lms load`",
    )


def check_models(
    workflow: Workflow,
    models: Sequence[ModelInfo],
    *,
    require_loaded: bool = False,
    server: str = "the server",
) -> list[Problem]:
    """Every finding about the workflow's models, in file order. No network."""
    found = _findings(workflow, models, require_loaded=require_loaded, server=server)
    return [f.problem for f in found]


def ensure_models(
    workflow: Workflow,
    models: Sequence[ModelInfo],
    *,
    require_loaded: bool = False,
    server: str = "the server",
) -> list[Problem]:
    """Raise for the first error (ModelNotFoundError / ModelValidationError); return warnings.

    The error says what `check_models` says, behind the finding's `path:line:col:`."""
    found = _findings(workflow, models, require_loaded=require_loaded, server=server)
    for finding in found:
        problem = finding.problem
        if not problem.is_error:
            continue
        location = SourceLocation(problem.path, problem.line, problem.col)
        message = f"{location}: {problem.message}"
        if problem.rule == "model-not-found":
            raise ModelNotFoundError(
                message,
                model=finding.model,
                available=[m.id for m in models],
                closest=finding.closest,
                location=location,
                hint=problem.hint,
            )
        raise ModelValidationError(message, hint=problem.hint)
    return [f.problem for f in found]


# --- fetching the catalog -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _client_for(
    server: ServerConfig, client: LMStudioClient | None
) -> AsyncIterator[LMStudioClient]:
    """The caller's client (left open: it is the run's pool) or a new one closed afterwards."""
    if client is not None:
        yield client
        return
    from .lmstudio import LMStudioClient  # httpx only for commands that talk to a server

    async with LMStudioClient.from_config(server) as new:
        yield new


def _open_cache() -> CatalogCache | None:
    """The catalog cache, or None when its directory is unusable: a cache must never be the
    reason a command fails (`lmflow doctor` reports it)."""
    try:
        return shared_cache()
    except CacheError:
        return None


async def fetch_catalog(
    server: ServerConfig,
    *,
    ttl: float = DEFAULT_TTL,
    refresh: bool = False,
    client: LMStudioClient | None = None,
) -> Catalog:
    """The server's catalog: from the disk cache when younger than `ttl` seconds (and not
    `refresh`), else from the server, then stored for the next process."""
    cache = _open_cache()
    if cache is not None and not refresh:
        with contextlib.suppress(*CacheError):
            hit = cache.get(server.base_url, ttl=ttl)
            if hit is not None:
                return hit
    async with _client_for(server, client) as live:
        catalog = await live.list_models()
    if cache is not None:
        with contextlib.suppress(*CacheError):
            cache.put(catalog)
    return catalog


async def _catalog_for(
    workflows: Sequence[Workflow],
    server: ServerConfig,
    *,
    ttl: float,
    refresh: bool,
    load: bool,
    require_loaded: bool,
    client: LMStudioClient | None,
) -> Catalog:
    """The catalog the check runs against; with `load`, after loading (`/api/v1/models/load`)
    every chat model the workflows use that is not loaded yet.

    `load` and `require_loaded` judge whether a model is loaded: from a fresh list, since a
    cached one may be a minute old and LM Studio unloads idle models."""
    refresh = refresh or load or require_loaded
    catalog = await fetch_catalog(server, ttl=ttl, refresh=refresh, client=client)
    if not load:
        return catalog
    to_load = sorted(
        {
            model.id
            for workflow in workflows
            for model in models_to_run(workflow, catalog.models)
            if model.state == "not-loaded"
        }
    )
    if not to_load:
        return catalog
    async with _client_for(server, client) as live:
        for model_id in to_load:
            await live.load_model(model_id)
        return await fetch_catalog(server, refresh=True, client=live)


async def verify_models(
    workflow: Workflow,
    server: ServerConfig,
    *,
    ttl: float = DEFAULT_TTL,
    refresh: bool = False,
    require_loaded: bool = False,
    load: bool = False,
    client: LMStudioClient | None = None,
) -> list[Problem]:
    """The model check of `lmflow run`: raises for the first error, returns the warnings.
    Pass the run's client so the check reuses its connection pool; its requests then carry
    the server's own id of each model the check matched (`model_routes`)."""
    family = list(workflow.family())  # the workflows it includes use models of the run too
    catalog = await _catalog_for(
        family,
        server,
        ttl=ttl,
        refresh=refresh,
        load=load,
        require_loaded=require_loaded,
        client=client,
    )
    warnings = [
        warning
        for member in family
        for warning in ensure_models(
            member, catalog.models, require_loaded=require_loaded, server=catalog.server
        )
    ]
    if client is not None:
        for member in family:
            client.routes.update(model_routes(member, catalog.models))
            client.vision_models.update(vision_models(member, catalog.models))
    return warnings


def model_routes(workflow: Workflow, models: Sequence[ModelInfo]) -> dict[str, tuple[str, ...]]:
    """Each model name the workflow's requests carry (the head of its list) -> the server's
    ids to send instead, in order: `qwen3-coder-30b` goes out as `qwen/qwen3-coder-30b`, and
    a fallback list's models the server does not have are left out."""
    routes: dict[str, tuple[str, ...]] = {}
    embedding = _embedding_references(workflow)
    for candidates, _ in workflow.model_references():
        served = list(routes.get(candidates[0], ()))
        for name in candidates:
            model = match_model(name, models).model
            if model is not None and _fits(model, candidates[0] in embedding):
                served_id = _served_id(name, model)
                if served_id not in served:
                    served.append(served_id)
        if served:
            routes[candidates[0]] = tuple(served)
    return routes


def _served_id(name: str, model: ModelInfo) -> str:
    """The id to send: the catalog's, keeping a `@quant` or `:N` the workflow asked for."""
    found = _INSTANCE.fullmatch(name)
    instance = f":{found['n']}" if found else ""
    quant = name.partition("@")[2].removesuffix(instance) if "@" in name else ""
    base = _without_quant(model.id)
    return f"{base}@{quant}{instance}" if quant else f"{model.id}{instance}"


def check_workflows_online(
    workflows: Sequence[Workflow],
    *,
    base_url: str | None = None,
    refresh: bool = False,
    cache_ttl: float | None = None,
    require_loaded: bool = False,
    load: bool = False,
) -> dict[str, list[Problem]]:
    """The model check of `lmflow validate`: Problems per workflow path. Workflows that name
    the same server share one catalog. An unreachable server raises (exit code 3)."""
    from .lmstudio_server import resolve_server

    ttl = model_cache_ttl(cache_ttl)
    by_server: dict[ServerConfig, list[Workflow]] = {}
    for workflow in workflows:
        by_server.setdefault(resolve_server(base_url, workflow.lmstudio), []).append(workflow)

    async def check_all() -> dict[str, list[Problem]]:
        found: dict[str, list[Problem]] = {}
        for server, group in by_server.items():
            catalog = await _catalog_for(
                group,
                server,
                ttl=ttl,
                refresh=refresh,
                load=load,
                require_loaded=require_loaded,
                client=None,
            )
            for workflow in group:
                problems = found.setdefault(str(workflow.path), [])
                if server.withheld is not None:
                    problems.append(_withheld_problem(workflow, server.withheld))
                problems.extend(
                    problem
                    for member in workflow.family()  # an included file's, at its own path
                    for problem in check_models(
                        member,
                        catalog.models,
                        require_loaded=require_loaded,
                        server=catalog.server,
                    )
                )
        return found

    return asyncio.run(check_all())


def _withheld_problem(workflow: Workflow, withheld: WithheldToken) -> Problem:
    """A warning, not an error: the check still runs, without the token."""
    at = workflow.source.position(("lmstudio", "base_url"))
    path = str(workflow.path)
    return Problem(
        path, at.line, at.col, withheld.message, "token-not-sent", withheld.hint, "warning"
    )


# --- lmflow doctor --------------------------------------------------------------------------

CheckStatus = Literal["ok", "warn", "fail"]

_FLAVOURS = {
    "native-v1": "LM Studio 0.4+ native API (/api/v1)",
    "native-v0": "LM Studio 0.3 native API (/api/v0)",
    "openai": "an OpenAI-compatible API only (/v1/models): model state and tool use unknown",
}


@dataclass(frozen=True)
class Check:
    """One line of `lmflow doctor`: what was checked, the verdict, and how to fix a failure."""

    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None


def _cache_check(server: str, ttl: float) -> Check:
    try:
        with CatalogCache() as cache:
            catalog = cache.peek(server)
            directory = cache.directory
    except CacheError as error:
        # A warning: every command works without the cache, only a little slower.
        return Check(
            "cache",
            "warn",
            f"{cache_dir()} cannot hold the model cache ({error}); working without it",
            f"set {CACHE_DIR_ENV} to a writable directory",
        )
    if catalog is None:
        age = f"nothing cached for {server} yet"
    else:
        fresh = "fresh" if catalog.age <= ttl else "stale"
        age = f"{server} cached {catalog.age:.0f} s ago, {fresh} (TTL {ttl:g} s)"
    return Check("cache", "ok", f"{directory}: {age}")


async def diagnose(
    server: ServerConfig, *, ttl: float = DEFAULT_TTL, client: LMStudioClient | None = None
) -> list[Check]:
    """Server reachable and which API it speaks, auth, `lms` on PATH, the cache. Asks the
    server directly (never the cache) and leaves the cache as it was."""
    from .lmstudio import START_SERVER_HINT

    cache = _cache_check(server.base_url, ttl)  # before the probe, so the age is the user's
    token = f"${server.token_env}"
    try:
        async with _client_for(server, client) as live:
            catalog = await live.list_models()
    except AuthenticationError as error:
        reach = Check("server", "ok", f"{server.base_url} answers (and wants a token)")
        auth = Check("auth", "fail", error.message, error.hint)
    except LLMClientError as error:
        reach = Check("server", "fail", error.message, error.hint or START_SERVER_HINT)
        auth = Check("auth", "warn", "not checked: the server did not answer")
    else:
        loaded = sum(m.ready for m in catalog.models)
        reach = Check(
            "server",
            "ok",
            f"{server.base_url} speaks {_FLAVOURS[catalog.flavour]}; "
            f"{len(catalog.models)} models, {loaded} loaded",
        )
        auth = Check(
            "auth", "ok", f"token from {token} accepted" if server.token else "no token needed"
        )
    lms = shutil.which("lms")
    tool = (
        Check("lms", "ok", f"lms CLI at {lms}")
        if lms
        else Check(
            "lms",
            "warn",
            "lms CLI not on PATH (optional: it tells idle from busy models)",
            "install it with `npx lmstudio install-cli` or `~/.lmstudio/bin/lms bootstrap`",
        )
    )
    return [reach, auth, tool, cache]

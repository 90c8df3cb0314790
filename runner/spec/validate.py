"""Schema and semantic checks of a workflow -> every Problem, in one pass.

The schema (schema.py) checks shape; this module checks meaning: ids, references between
steps, templates, servers, models, secrets. Each check reads the data defensively, so a
file with schema errors still gets its other problems reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .. import templating
from . import image_files
from .agents import with_agent, written_at
from .file_checks import not_a_file
from .load import Document, read_document
from .model import included_path, is_note
from .plan import Plan, StepPlan, TemplateField, cycles, plan_data
from .problems import Problem
from .prompt_files import FILE_KEYS, read_text, with_file_texts
from .schema import describe, did_you_mean, schema_problems
from .side_effects import RULE, name_says_writing, shared_writers
from .source import JsonPath, Position, SourceMap

STEP_ATTRIBUTES = ("output", "status")
LOOP_ATTRIBUTES = ("index", "previous")
"""What nested steps of a loop read of it (`loop.index` is 1-based)."""
LOOP_ITERATIONS = "iterations"
"""The field of a loop step's output that counts its iterations."""
WORKFLOW_ATTRIBUTES = ("name", "description", "path", "dir")
RUN_ATTRIBUTES = ("id", "dir", "started_at")
TOOL_CHOICES = ("auto", "none", "required")
MAX_INCLUDE_DEPTH = 100
"""How many `workflow:` steps deep files may include each other: checking and running them
recurse, and a chain that long is a mistake long before it runs out of stack."""
SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|api[_-]?key|apikey|auth|credential)", re.IGNORECASE
)
URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s{]*:[^/@\s{]+@", re.IGNORECASE)
"""A URL with `user:password@` written into it (a templated password is fine)."""
SECRET_VALUE = re.compile(
    r"^(Bearer|Basic|Token)\s+\S{8,}$"  # an Authorization header with the credential inline
    r"|^(sk|pk|rk)-[A-Za-z0-9_-]{16,}"  # OpenAI-style keys
    r"|^gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|^github_pat_[A-Za-z0-9_]{20,}"
    r"|^xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|^AKIA[0-9A-Z]{16}$"  # AWS access key id
    r"|^glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|^hf_[A-Za-z0-9]{20,}",  # Hugging Face
    re.IGNORECASE,
)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _entries(value: Any) -> dict[str, Any]:
    """A named map without the user's own `x-` notes."""
    return {k: v for k, v in _dict(value).items() if not is_note(k)}


def _without_notes(value: Any) -> Any:
    """Settings without the user's `x-` notes, which never change what a server is."""
    return {k: v for k, v in value.items() if not is_note(k)} if isinstance(value, dict) else value


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _looks_like_token(value: str) -> bool:
    """A value written where the name of a variable belongs that looks like the credential
    itself: a known key format, or long and mixed like a generated token."""
    return bool(
        SECRET_VALUE.search(value)
        or (
            len(value) >= 24
            and re.search(r"\d", value)
            and re.search(r"[a-z]", value)
            and re.search(r"[A-Z]", value)
        )
    )


def _oauth_variable(server: str, key: str) -> str:
    """A variable name to suggest for a server's `client_id_env`/`client_secret_env`."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", server).upper().strip("_")
    return f"{stem}_{key.removesuffix('_env').upper()}"


def _oauth_client_problems(server: str, settings: dict[str, Any]) -> list[tuple[str, str]]:
    """What is missing from (or too much in) the client an `oauth:` mapping describes."""
    proofs = [key for key in ("client_secret_env", "client_key_env") if key in settings]
    has_id = "client_id_env" in settings
    add_id = f"add `client_id_env: {_oauth_variable(server, 'client_id_env')}`"
    if settings.get("grant") != "client_credentials":
        if "client_key_env" in settings:
            return [
                (
                    "has client_key_env, which only the client credentials grant uses",
                    "add `grant: client_credentials`, or drop client_key_env",
                )
            ]
        if proofs and not has_id:
            return [
                (
                    "has a client secret but no client_id_env: it belongs to a pre-registered "
                    "client",
                    add_id,
                )
            ]
        return []
    problems = []
    if not has_id:
        problems.append(
            (
                "has no client_id_env: the client credentials grant logs in as a "
                "pre-registered client",
                add_id,
            )
        )
    if not proofs:
        secret = _oauth_variable(server, "client_secret_env")
        problems.append(
            (
                "has no client_secret_env or client_key_env: the client must prove who it is",
                f"add `client_secret_env: {secret}` (or `client_key_env:` "
                "for a private key that signs a JWT)",
            )
        )
    if len(proofs) == 2:
        problems.append(
            (
                "has both client_secret_env and client_key_env: the client proves who "
                "it is with one",
                "keep one of them",
            )
        )
    return problems


def _model_names(value: Any) -> list[tuple[int | None, str]]:
    """The names of a `model:` value, one or a fallback list, with their list index."""
    if isinstance(value, str):
        return [(None, value)]
    if isinstance(value, list):
        return [(index, name) for index, name in enumerate(value) if isinstance(name, str)]
    return []


def validate_document(doc: Document, *, including: tuple[Path, ...] = ()) -> list[Problem]:
    """All problems of a loaded document (its load problems included), sorted by position;
    with those of the workflows its `workflow:` steps include, each in its own file.
    `including`: the files that include this one, outermost first (to refuse cycles)."""
    problems = list(doc.problems)
    if doc.data is not None:
        problems.extend(schema_problems(doc.data, doc.source))
        if isinstance(doc.data, dict):
            problems.extend(_Checker(doc.data, doc.source, including).run())
    return sorted(set(problems), key=lambda p: (p.line, p.col, p.rule, p.message))


class _Checker:
    """The semantic checks. One instance per document."""

    def __init__(
        self,
        data: dict[str, Any],
        source: SourceMap,
        including: tuple[Path, ...] = (),
        *,
        outer: _Checker | None = None,
        loop: StepPlan | None = None,
    ) -> None:
        """The checker of a file's steps (`including`: the files that include it), or
        (`outer`, `loop`) of the nested steps of one of its loop steps: those share the
        file's problems, prompt files and agents."""
        self.data = data
        self.source = source
        self.outer = outer
        self.loop = loop
        self.workflow_path = Path(source.path)
        self.including = (*including, self.workflow_path.resolve())
        self.children: dict[int, dict[str, Any]] = {}
        """The data of each `workflow:` step's file that could be read, by step index."""
        if outer is None or loop is None:
            self.at: JsonPath = ("steps",)
            self.problems: list[Problem] = []
            self.prompt_files: dict[JsonPath, SourceMap] = {}
            """The text of each prompt file read, as a source of its own, by the key naming it."""
            self.written_agents = _entries(data.get("agents"))
            self.agents = {
                name: self._with_files(agent, ("agents", name))
                for name, agent in self.written_agents.items()
            }
            raw_steps = _list(data.get("steps"))
            self.written = _written(raw_steps)  # before merging: its problems are placed by it
            merged = [self._merged(s, ("steps", i)) for i, s in enumerate(raw_steps)]
        else:
            self.including = outer.including
            self.at = (*outer.at, loop.index, "loop", "steps")
            self.problems = outer.problems
            self.prompt_files = outer.prompt_files
            self.written_agents, self.agents = outer.written_agents, outer.agents
            raw_steps = _list(_dict(outer.written[loop.index].get("loop")).get("steps"))
            self.written = _written(raw_steps)
            merged = _list(_dict(outer.steps[loop.index].get("loop")).get("steps"))
        self.steps: list[dict[str, Any]] = [s if isinstance(s, dict) else {} for s in merged]
        self.malformed_steps = {i for i, s in enumerate(raw_steps) if not isinstance(s, dict)}
        self.step_index: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            step_id = _str(step.get("id"))
            if step_id is not None:
                self.step_index.setdefault(step_id, i)
        self.inputs = _entries(data.get("inputs"))
        self.servers = _entries(data.get("mcp_servers"))
        self.aliases = _entries(data.get("models"))
        if outer is None or loop is None or loop.body is None:
            self.plan: Plan = plan_data(
                self.steps, self.servers, _entries(data.get("outputs")), self.key_path
            )
        else:
            self.plan = loop.body

    def _merged(self, step: Any, here: JsonPath) -> Any:
        """A step's data with its prompt files read and its agent merged in; a loop step's
        nested steps too."""
        if not isinstance(step, dict):
            return step
        merged = with_agent(self._with_files(step, here), self.agents)
        loop = merged.get("loop")
        if isinstance(loop, dict) and isinstance(loop.get("steps"), list):
            inner = (*here, "loop", "steps")
            steps = [self._merged(s, (*inner, j)) for j, s in enumerate(loop["steps"])]
            merged = {**merged, "loop": {**loop, "steps": steps}}
        return merged

    def run(self) -> list[Problem]:
        self._check_step_ids()
        if self.outer is None:
            self._check_inputs()
            self._check_servers()
            self._check_agents()
        self._check_step_agents()
        self._check_included()
        self._check_steps()
        self._check_cycles()
        self._check_shared_servers()
        if self.outer is None:
            self._check_outputs()
            self._check_token_env()
        return self.problems

    # --- reporting -----------------------------------------------------------------------

    def report(
        self,
        path: JsonPath,
        message: str,
        rule: str,
        hint: str | None = None,
        *,
        key: bool = False,
        severity: str = "error",
        offset: int | None = None,
    ) -> None:
        path = self.located(path)
        source = self.source_of(path)
        if offset is not None:
            pos = source.offset_position(offset)
        else:
            pos = source.key_position(path) if key else source.position(path)
        self.problems.append(
            Problem(
                source.path,
                pos.line,
                pos.col,
                message,
                rule,
                hint,
                "warning" if severity == "warning" else "error",
            )
        )

    def located(self, path: JsonPath) -> JsonPath:
        """Where the file spells a key of a merged step: a setting a step takes from its
        agent is reported at the agent, a text read from a file at the key naming it."""
        n = len(self.at)
        if len(path) < n + 2 or path[:n] != self.at:
            return path
        index, key = path[n], path[n + 1]
        if not isinstance(index, int) or not isinstance(key, str) or index >= len(self.written):
            return path
        return (*self.key_path(index, key), *path[n + 2 :])

    def key_path(self, index: int, key: str) -> JsonPath:
        """Where the file spells `key` of step `index`."""
        return written_at(self.written[index], self.written_agents, (*self.at, index), key)

    def source_of(self, path: JsonPath) -> SourceMap:
        """The text a path's positions are in: a prompt file's own, or the workflow's."""
        return self.prompt_files.get(path, self.source)

    def _with_files(self, data: dict[str, Any], here: JsonPath) -> Any:
        """A step's or agent's data with its prompt files read; one that cannot be read is
        reported at the key naming it, with the path it was looked for at."""

        def read(key: str, file: Path) -> str | None:
            at = (*here, key)
            reason = not_a_file(file)  # a pipe would block the read, /dev/zero never end it
            text = None
            if reason is None:
                try:
                    text = read_text(file)
                except OSError as error:
                    reason = error.strerror or str(error)
                except UnicodeDecodeError:
                    reason = "not UTF-8 text"
            if text is None:
                self.report(
                    at,
                    f"{key} of {self.where(here)} cannot be read: {file}: {reason}",
                    "unreadable-prompt-file",
                    "a prompt file's path is relative to the workflow file's directory "
                    f"({self.workflow_path.parent}); write the path of a UTF-8 text file",
                )
                return None
            self.prompt_files[at] = SourceMap(
                str(file), text, MappingProxyType({at: Position(1, 1, 0, len(text))})
            )
            return text

        return with_file_texts(data, self.workflow_path, read)

    def where(self, path: JsonPath) -> str:
        return describe(path, self.data)

    # --- ids, inputs, servers --------------------------------------------------------------

    def _check_step_ids(self) -> None:
        for i, step in enumerate(self.steps):
            step_id = _str(step.get("id"))
            if step_id is not None and self.step_index[step_id] != i:
                first = self.source.position((*self.at, self.step_index[step_id]))
                self.report(
                    (*self.at, i, "id"),
                    f"step id {step_id!r} is used twice",
                    "duplicate-step-id",
                    f"the first step with this id is at line {first.line}; "
                    "give each step its own id",
                )

    def _check_inputs(self) -> None:
        for name, spec in self.inputs.items():
            spec = _dict(spec)
            schema = {k: spec[k] for k in ("type", "enum", "minimum", "maximum") if k in spec}
            if not isinstance(spec.get("type"), str):
                continue
            try:
                checker = Draft202012Validator(schema)
                checker.check_schema(schema)
            except SchemaError:
                continue  # the workflow schema already reported the bad declaration
            if "default" in spec:
                for error in checker.iter_errors(spec["default"]):
                    self.report(
                        ("inputs", name, "default"),
                        f"default of input {name!r} does not fit its declaration: {error.message}",
                        "bad-input-default",
                        f"make the default {spec['type']!r}, or change `type:`",
                    )
            for i, option in enumerate(_list(spec.get("enum"))):
                type_only = Draft202012Validator({"type": spec["type"]})
                for error in type_only.iter_errors(option):
                    self.report(
                        ("inputs", name, "enum", i),
                        f"enum value of input {name!r}: {error.message}",
                        "bad-input-default",
                    )
            low, high = spec.get("minimum"), spec.get("maximum")
            if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
                self.report(
                    ("inputs", name, "minimum"),
                    f"input {name!r} has minimum {low} above maximum {high}",
                    "bad-value",
                )
            if spec.get("required") is True and "default" in spec:
                self.report(
                    ("inputs", name, "required"),
                    f"input {name!r} is required but also has a default",
                    "required-with-default",
                    "the default is never used; drop `required: true` or the default",
                    severity="warning",
                )

    def _check_servers(self) -> None:
        for template in self.plan.server_fields:
            self._check_field(template, allow_steps=False)
        for name, spec in self.servers.items():
            spec = _dict(spec)
            self._check_imported_server(name, spec)
            url = _str(spec.get("url"))
            if url and URL_PASSWORD.search(url):
                self.report(
                    ("mcp_servers", name, "url"),
                    f"url of server {name!r} holds a password",
                    "literal-secret",
                    "keep secrets out of the file: send the credential in `headers:` with "
                    f'Authorization: "Bearer {{{{ env.{name.upper().replace("-", "_")}_TOKEN }}}}"',
                )
            for table in ("env", "headers"):
                for key, value in _dict(spec.get(table)).items():
                    if isinstance(value, str):
                        self._check_secret(("mcp_servers", name, table, key), key, value, table)
            self._check_oauth(name, spec.get("oauth"))

    def _check_oauth(self, name: str, oauth: Any) -> None:
        """The settings name variables (a value that looks like the credential itself is a
        leak), and a whole client: an id with one way to prove it."""
        settings = _dict(oauth)
        here = ("mcp_servers", name, "oauth")
        for key in ("client_id_env", "client_secret_env", "client_key_env"):
            value = _str(settings.get(key))
            if value and _looks_like_token(value):
                self.report(
                    (*here, key),
                    f"oauth.{key} of server {name!r} looks like a credential, not the name of "
                    "a variable",
                    "literal-secret",
                    f"write the variable's name ({key}: {_oauth_variable(name, key)}) and "
                    "export the value in that variable",
                )
        for message, hint in _oauth_client_problems(name, settings):
            self.report(
                here, f"oauth of server {name!r} {message}", "incomplete-oauth-client", hint
            )

    def _check_agents(self) -> None:
        """Each agent's servers, once at the agent (the steps that name it are not told
        again), and each step's `agent:` name."""
        for name, agent in self.written_agents.items():
            self._check_text_or_file(_dict(agent), ("agents", name))
            for j, server in enumerate(_list(_dict(agent).get("mcp"))):
                if isinstance(server, str) and server not in self.servers:
                    self.report(
                        ("agents", name, "mcp", j),
                        f"agent {name!r} uses MCP server {server!r}, which is not declared",
                        "unknown-server",
                        self._server_hint(server),
                    )

    def _check_step_agents(self) -> None:
        for i, step in enumerate(self.written):
            self._check_text_or_file(step, (*self.at, i))
            self._check_server_prompts(step, (*self.at, i))
            named = step.get("agent")
            if isinstance(named, str) and named not in self.agents:
                declared = list(self.agents)
                listing = "declared agents: " + ", ".join(declared) if declared else None
                self.report(
                    (*self.at, i, "agent"),
                    f"{self.where((*self.at, i))} names agent {named!r}, which is not declared",
                    "unknown-agent",
                    did_you_mean(named, declared) or listing or "declare it under `agents:`",
                )

    def _check_text_or_file(self, data: dict[str, Any], here: JsonPath) -> None:
        for text_key, file_key in FILE_KEYS.items():
            if text_key in data and file_key in data:
                self.report(
                    (*here, file_key),
                    f"{self.where(here)} has both `{text_key}:` and `{file_key}:`",
                    "text-and-file",
                    f"keep one: the text inline in `{text_key}:`, or a file in `{file_key}:`",
                )

    def _check_server_prompts(self, step: dict[str, Any], here: JsonPath) -> None:
        """`prompt_from:`/`system_from:` stand for a text: not next to it, and from a server
        the workflow declares (whether the server has the prompt, `validate --servers` says)."""
        for text_key in FILE_KEYS:
            from_key = f"{text_key}_from"
            spec = step.get(from_key)
            if not isinstance(spec, dict):
                continue
            for other in (text_key, FILE_KEYS[text_key]):
                if other in step:
                    self.report(
                        (*here, from_key),
                        f"{self.where(here)} has both `{other}:` and `{from_key}:`",
                        "text-and-server-prompt",
                        f"keep one: the text in `{other}:`, or the server's prompt in "
                        f"`{from_key}:`",
                    )
            server = spec.get("server")
            if isinstance(server, str) and server not in self.servers:
                self.report(
                    (*here, from_key, "server"),
                    f"{from_key} of {self.where(here)} names MCP server {server!r}, which is "
                    "not declared",
                    "unknown-server",
                    self._server_hint(server),
                )

    def _check_imported_server(self, name: str, spec: dict[str, Any]) -> None:
        """A `from:` server must be in the file it names (a wrong `from:` or `name:` is the
        schema's to report)."""
        from ..errors import ConfigurationError
        from .server_files import SOURCES, imported_server

        source, other_name = spec.get("from"), spec.get("name", name)
        if source not in SOURCES or not isinstance(other_name, str):
            return
        try:
            imported_server(source, other_name, Path(self.source.path))
        except ConfigurationError as error:
            key = "name" if "name" in spec else "from"
            self.report(
                ("mcp_servers", name, key), error.message, "unknown-imported-server", error.hint
            )

    def _check_secret(self, path: JsonPath, key: str, value: str, table: str) -> None:
        if templating.is_template(value) or not value.strip():
            return
        looks_secret = SECRET_VALUE.search(value.strip()) or (
            SECRET_KEY.search(key) and len(value) >= 8 and " " not in value.strip()
        )
        if looks_secret:
            generic = key.lower() in ("authorization", "proxy-authorization", "cookie")
            name = re.sub(r"[^A-Za-z0-9]+", "_", f"{path[1]}_token" if generic else key)
            name = name.upper().strip("_")
            fix = (
                f"Bearer {{{{ env.{name} }}}}"
                if value.lower().startswith("bearer")
                else (f"{{{{ env.{name} }}}}")
            )
            self.report(
                path,
                f"{table} {key!r} of server {path[1]!r} holds a literal secret",
                "literal-secret",
                f'keep secrets out of the file: write `{key}: "{fix}"` and set '
                f"{name} in the environment",
            )

    def _check_token_env(self) -> None:
        token_env = _str(_dict(self.data.get("lmstudio")).get("token_env"))
        if token_env and _looks_like_token(token_env):
            self.report(
                ("lmstudio", "token_env"),
                "lmstudio.token_env looks like a token, not the name of a variable",
                "literal-secret",
                "write the variable's name (token_env: LM_API_TOKEN) and export the "
                "token in that variable",
            )

    # --- steps -------------------------------------------------------------------------------

    def _check_steps(self) -> None:
        defaults = _dict(self.data.get("defaults"))
        for planned in self.plan.steps:
            i, step = planned.index, self.steps[planned.index]
            if i in self.malformed_steps:
                continue  # not a mapping: the schema said so, nothing more to check
            self._check_needs(planned, step)
            for template in planned.fields:
                self._check_field(template, for_each=planned.has_for_each)
                self._check_step_refs(planned, template)
            self._check_for_each(planned, step)
            self._check_step_tools(i, step)
            if "run" in step:
                self._check_command(planned, step)
            elif "loop" in step:
                self._check_loop(planned)
            elif "ask" in step:
                self._check_ask(planned, step)
            elif "embed" in step:
                if "model" in step:  # required by the schema; defaults.model is for chat
                    self._check_step_model(i, step, {})
            elif "tool" not in step and "workflow" not in step:
                self._check_step_model(i, step, defaults)
                self._check_continue(planned, step)
                self._check_images(planned, step)
        if self.loop is not None and self.loop.body is not None:
            for template in self.loop.body.output_fields:  # `until:`, read after the steps
                self._check_field(template)

    def _check_loop(self, planned: StepPlan) -> None:
        """A loop step's nested steps, by a checker of their own (`for_each:` on the loop
        step is the schema's to refuse)."""
        if planned.body is None:
            return
        inner = _Checker(self.data, self.source, outer=self, loop=planned)
        for j, inner_step in enumerate(inner.steps):
            inner_id = _str(inner_step.get("id"))
            if inner_id == LOOP_ITERATIONS:
                self.report(
                    (*inner.at, j, "id"),
                    f"a step inside loop {planned.id!r} is called {inner_id!r}, the name of "
                    "the loop output's iteration count",
                    "reserved-step-id",
                    "give the nested step another id",
                )
            elif inner_id is not None and self._visible_step(inner_id) is not None:
                self.report(
                    (*inner.at, j, "id"),
                    f"step id {inner_id!r} inside loop {planned.id!r} is also a step outside it",
                    "duplicate-step-id",
                    "give the nested step its own id: templates read steps by id, and "
                    "outside the loop its output is steps."
                    f"{planned.id}.output.{inner_id}",
                )
        inner.run()

    def _visible_step(self, step_id: str) -> dict[str, Any] | None:
        """The data of the step an id names here: a step of these steps, or of the steps
        around the loop these are nested in."""
        found = self._owner(step_id)
        return found[0].steps[found[1]] if found is not None else None

    def _owner(self, step_id: str) -> tuple[_Checker, int] | None:
        """The checker whose steps hold the step an id names here, and its index there."""
        if step_id in self.step_index:
            return self, self.step_index[step_id]
        return self.outer._owner(step_id) if self.outer is not None else None

    def _visible_ids(self) -> list[str]:
        outside = self.outer._visible_ids() if self.outer is not None else []
        return [*self.step_index, *outside]

    def _nested_id(self, step_id: str) -> str | None:
        """The loop step whose nested steps (at any depth) hold `step_id`, if one does."""
        for planned in self.plan.steps:
            if planned.body is not None and _plan_holds(planned.body, step_id):
                return planned.id
        return None

    def _check_included(self) -> None:
        """Each `workflow:` step: its file validated (recursively, its problems in its own
        file), no file including itself, and `with:` against the inputs it declares."""
        for i, step in enumerate(self.steps):
            name = _str(step.get("workflow"))
            if name is None or i in self.malformed_steps:
                continue
            here = (*self.at, i, "workflow")
            path = included_path(name, self.workflow_path)
            reason = not_a_file(path)
            if reason is not None:
                self._unreadable_workflow(i, path, reason)
                continue
            if len(self.including) > MAX_INCLUDE_DEPTH:
                self.report(
                    here,
                    f"{self.where((*self.at, i))} includes {path.name} more than "
                    f"{MAX_INCLUDE_DEPTH} workflows deep",
                    "workflow-too-deep",
                    "flatten the chain: let a workflow include its parts side by side",
                )
                continue
            if path.resolve() in self.including:
                chain = [*self.including[self.including.index(path.resolve()) :], path.resolve()]
                self.report(
                    here,
                    f"{self.where((*self.at, i))} includes a workflow that includes it: "
                    + " -> ".join(p.name for p in chain),
                    "workflow-cycle",
                    "a workflow cannot run itself, directly or through another; move the shared "
                    "steps into a file that both include",
                )
                continue
            doc = read_document(path)
            if doc.data is None and any(
                p.rule in ("unreadable", "file-too-large") for p in doc.problems
            ):
                self._unreadable_workflow(i, path, doc.problems[0].message)
                continue
            self.problems.extend(validate_document(doc, including=self.including))
            if isinstance(doc.data, dict):
                self.children[i] = doc.data
                self._check_with_inputs(i, step, doc.data, path)
                self._check_included_servers(i, doc.data, path)

    def _unreadable_workflow(self, i: int, path: Path, reason: str) -> None:
        self.report(
            (*self.at, i, "workflow"),
            f"{self.where((*self.at, i))} runs {path}, which cannot be read: {reason}",
            "unreadable-workflow",
            "the path is relative to this workflow file's directory "
            f"({self.workflow_path.parent}); write the path of a workflow file",
        )

    def _check_with_inputs(
        self, i: int, step: dict[str, Any], child: dict[str, Any], path: Path
    ) -> None:
        """`with:` of a `workflow:` step gives the inputs its file declares: no unknown name,
        every required one, and literal values of the declared type."""
        here = (*self.at, i)
        declared = {k: _dict(v) for k, v in _entries(child.get("inputs")).items()}
        given = _dict(step.get("with"))
        for name, value in given.items():
            if is_note(name):
                continue
            spec = declared.get(name)
            if spec is None:
                self.report(
                    (*here, "with", name),
                    f"{self.where(here)} gives input {name!r}, which {path.name} does not declare",
                    "unknown-input",
                    did_you_mean(name, list(declared))
                    or ("declared inputs: " + ", ".join(declared) if declared else None)
                    or f"{path.name} declares no inputs",
                    key=True,
                )
            elif not (isinstance(value, str) and templating.is_template(value)):
                self._check_literal_input(here, name, value, spec, path)
        for name, spec in declared.items():
            required = spec.get("required", "default" not in spec)
            if required is True and name not in given:
                self.report(
                    (*here, "with") if "with" in step else (*here, "workflow"),
                    f"{self.where(here)} does not give input {name!r}, which {path.name} requires",
                    "missing-input",
                    f"add it: with: {{{name}: ...}}",
                    key="with" in step,
                )

    def _check_literal_input(
        self, here: JsonPath, name: str, value: Any, spec: dict[str, Any], path: Path
    ) -> None:
        schema = {k: spec[k] for k in ("type", "enum", "minimum", "maximum") if k in spec}
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError:
            return  # the child's own validation reported the declaration
        for error in Draft202012Validator(schema).iter_errors(value):
            self.report(
                (*here, "with", name),
                f"input {name!r} of {path.name}: {error.message}",
                "bad-input-type",
                f"{path.name} declares {name!r} as {spec.get('type')!r}",
            )

    def _check_included_servers(self, i: int, child: dict[str, Any], path: Path) -> None:
        """A server both files declare is one server of the run: it must be declared the same
        way in both (one that differs would need its own name)."""
        for name, spec in _entries(child.get("mcp_servers")).items():
            mine = self.servers.get(name)
            if mine is not None and _without_notes(mine) != _without_notes(spec):
                self.report(
                    (*self.at, i, "workflow"),
                    f"{path.name} declares MCP server {name!r} differently from this file; "
                    "the run starts each server once, by name",
                    "conflicting-server",
                    f"declare {name!r} the same way in both files, or rename one of them",
                )

    def _check_images(self, planned: StepPlan, step: dict[str, Any]) -> None:
        """What can be known offline of `images:`: a literal file exists and is an image
        within the limit, a literal data: URI is one, and no entry sends a secret (a URL
        goes to the model server as it is, which may fetch it)."""
        for j, entry in enumerate(_list(step.get("images"))):
            if not isinstance(entry, str):
                continue
            at = (*self.at, planned.index, "images", j)
            if templating.is_template(entry):
                template = next((f for f in planned.fields if f.path == at), None)
                if template is not None and any(r.root == "env" for r in template.refs):
                    self._ref_problem(
                        template,
                        next(r for r in template.refs if r.root == "env"),
                        f"image {j} of {self.where(at[:2])} reads env: an image entry is sent "
                        "to the model server (a URL as it is), so it must not carry a secret",
                        "secret-in-image",
                        "name the image by a path, a public URL or an input instead",
                    )
                continue
            kind = image_files.kind_of(entry)
            try:
                if kind == "file":
                    image_files.read_image(image_files.resolved(entry, self.workflow_path))
                elif kind == "data":
                    image_files.decode_data_uri(entry)
            except image_files.ImageFileError as error:
                self.report(
                    at,
                    f"image {j} of {self.where(at[:2])}: {error}",
                    "bad-image",
                    f"a path is relative to the workflow file's directory "
                    f"({self.workflow_path.parent}); send a {image_files.KINDS} file of at "
                    f"most {image_files.MAX_IMAGE_BYTES:,} bytes",
                )
            if kind == "url" and URL_PASSWORD.search(entry):
                self.report(
                    at,
                    f"image {j} of {self.where(at[:2])} is a URL with a password in it",
                    "literal-secret",
                    "the URL is sent to the model server as it is; use a public URL or a file",
                )

    def _check_command(self, planned: StepPlan, step: dict[str, Any]) -> None:
        """A command is a list of arguments, or one string for a shell: never a mix-up that
        would run `sh -c` on a list or split a string on spaces."""
        here = (*self.at, planned.index)
        run, shell = step.get("run"), step.get("shell") is True
        if isinstance(run, str) and not shell:
            self.report(
                (*here, "run"),
                f"`run:` of {self.where(here)} is one string but `shell:` is not true",
                "command-string-without-shell",
                "give the arguments as a list, e.g. run: [pytest, -q], or say `shell: true` "
                "to run the string with /bin/sh -c",
            )
        elif isinstance(run, list) and shell:
            self.report(
                (*here, "shell"),
                f"{self.where(here)} says `shell: true` but `run:` is a list",
                "command-list-with-shell",
                "with a shell, `run:` is one command line (a string); without one, drop "
                "`shell: true` and keep the list",
            )

    def _check_ask(self, planned: StepPlan, step: dict[str, Any]) -> None:
        """An `ask:` step's `type`, `choices` and `default` agree, so a run never finds out
        half-way that its default is not an answer the question takes."""
        here = (*self.at, planned.index)
        kind, choices = step.get("type", "string"), step.get("choices")
        if kind == "enum" and not isinstance(choices, list):
            self.report(
                (*here, "type"),
                f"{self.where(here)} is an enum question without `choices:`",
                "ask-choices",
                "list the answers it takes, e.g. choices: [major, minor, patch]",
            )
        elif kind in ("boolean", "string") and choices is not None:
            self.report(
                (*here, "choices"),
                f"{self.where(here)} has `choices:` but its type is {kind}",
                "ask-choices",
                "say `type: enum` to take only those answers, or remove `choices:`",
            )
        if "default" not in step or kind not in ("boolean", "string", "enum"):
            return
        default = step["default"]
        if kind == "boolean" and not isinstance(default, bool):
            self.report(
                (*here, "default"),
                f"the default of {self.where(here)} is {default!r}, not true or false",
                "ask-default",
                "a boolean question's default is true or false, without quotes",
            )
        elif kind != "boolean" and isinstance(default, bool):
            self.report(
                (*here, "default"),
                f"the default of {self.where(here)} is {str(default).lower()}, but the "
                f"question is of type {kind}",
                "ask-default",
                f'quote it ("{str(default).lower()}") or say `type: boolean`',
            )
        elif kind == "enum" and isinstance(choices, list) and default not in choices:
            self.report(
                (*here, "default"),
                f"the default of {self.where(here)} is {default!r}, not one of its choices",
                "ask-default",
                did_you_mean(str(default), [str(c) for c in choices])
                or "choose one of: " + ", ".join(map(str, choices)),
            )

    def _check_continue(self, planned: StepPlan, step: dict[str, Any]) -> None:
        """`continue: ID` names an earlier model step with one conversation (no `for_each`),
        and the step that continues it keeps that conversation's system prompt."""
        target = step.get("continue")
        if not isinstance(target, str):
            return  # absent, or the schema's to report
        here = (*self.at, planned.index)
        at = (*here, "continue")
        index = self.step_index.get(target)
        if index is None:
            self.report(
                at,
                f"{self.where(here)} continues unknown step {target!r}",
                "unknown-step",
                did_you_mean(target, list(self.step_index)),
            )
            return
        other = self.steps[index]
        if index >= planned.index:
            self.report(
                at,
                f"{self.where(here)} continues step {target!r}, which "
                + ("is itself" if index == planned.index else "comes later"),
                "continue-order",
                f"a step continues the conversation of a model step before it: move {target!r} "
                "above this step",
            )
        elif any(key in other for key in ("tool", "run", "embed", "workflow", "ask", "loop")):
            self.report(
                at,
                f"{self.where(here)} continues step {target!r}, which is not a model step: it "
                "has no conversation",
                "continue-not-model",
                "name a step with a `prompt:` (a model step)",
            )
        elif other.get("for_each") is not None:
            self.report(
                at,
                f"{self.where(here)} continues step {target!r}, which runs once per item "
                "(`for_each`): it has no one conversation to continue",
                "continue-for-each",
                "continue a step without `for_each`, or give each item its own follow-up "
                "inside that step's prompt",
            )
        if key := next((k for k in ("system", "system_file", "system_from") if k in step), None):
            self.report(
                (*here, key),
                f"{self.where(here)} continues step {target!r} but sets a system prompt",
                "continue-with-system",
                f"a continued conversation keeps the system prompt of {target!r}: drop "
                f"`{key}:` here (say what is new in the prompt)",
            )

    def _check_needs(self, planned: StepPlan, step: dict[str, Any]) -> None:
        here = (*self.at, planned.index)
        needs = step.get("needs")
        for j, name in enumerate([needs] if isinstance(needs, str) else _list(needs)):
            if not isinstance(name, str):
                continue
            at = (*here, "needs") if isinstance(needs, str) else (*here, "needs", j)
            if name == planned.id:
                self.report(at, f"step {name!r} needs itself", "needs-cycle")
            elif self._visible_step(name) is None:
                self.report(
                    at,
                    f"{self.where(here)} needs unknown step {name!r}",
                    "unknown-step",
                    did_you_mean(name, self._visible_ids()),
                )

    def _check_for_each(self, planned: StepPlan, step: dict[str, Any]) -> None:
        """A `for_each` that certainly is not a list: plain text, or a lone reference to an
        input or an output whose declared type is something else."""
        here = (*self.at, planned.index)
        value = step.get("for_each")
        if value is None:
            if isinstance(step.get("concurrency"), int):
                self.report(
                    (*here, "concurrency"),
                    f"{self.where(here)} sets `concurrency:` but has no `for_each:`",
                    "concurrency-without-for-each",
                    "step concurrency limits the items of a for_each; for the whole run "
                    "set `defaults: {concurrency: N}`",
                    severity="warning",
                )
            return
        if not isinstance(value, str):
            return  # a literal list, or the schema's to report
        declared = self._declared_type(value)
        if declared is not None and declared != "array":
            self.report(
                (*here, "for_each"),
                f"for_each of {self.where(here)} is {declared}, not a list",
                "for-each-not-a-list",
                "give it a list: an array input, a step output that is an array, or [a, b]",
            )

    def _declared_type(self, text: str) -> str | None:
        """What a for_each text gives, when the file says: `string` for plain text, the
        declared type of a lone `{{ inputs.x }}`, or of `{{ steps.y.output }}` when step y
        has an output_schema with a type. None when it cannot be known statically."""
        if not templating.is_template(text):
            return "string"
        lone = re.fullmatch(r"\{\{\s*(inputs\.(\w+)|steps\.(\w+)\.output)\s*\}\}", text.strip())
        if lone is None:
            return None
        if lone[2] is not None:
            declared = _dict(self.inputs.get(lone[2])).get("type")
        else:
            index = self.step_index.get(lone[3])
            schema = _dict(self.steps[index].get("output_schema")) if index is not None else {}
            declared = schema.get("type")
        return declared if isinstance(declared, str) else None

    def _check_shared_servers(self) -> None:
        """Warn where two steps that may run at the same time use one server and one of
        them may write through it (spec/side_effects.py). Offline, which tools write is
        what their names say."""
        for shared in shared_writers(
            self.plan,
            lambda i: self._servers_of(self.steps[i]),
            lambda i: self._writes(self.steps[i]),
        ):
            self.report(
                (*self.at, shared.second.index),
                shared.message,
                RULE,
                shared.hint,
                severity="warning",
            )

    def _servers_of(self, step: dict[str, Any]) -> set[str]:
        servers = {s for s in _list(step.get("mcp")) if isinstance(s, str)}
        tool = _str(step.get("tool"))
        if tool and "." in tool:
            servers.add(tool.split(".", 1)[0])
        return servers & set(self.servers)

    def _writes(self, step: dict[str, Any]) -> dict[str, str]:
        """Server -> a tool of it the step may write through (by the tool's name)."""
        found: dict[str, str] = {}
        tool = _str(step.get("tool"))
        if tool and "." in tool and name_says_writing(tool.split(".", 1)[1]):
            found[tool.split(".", 1)[0]] = tool
        servers = [s for s in _list(step.get("mcp")) if isinstance(s, str)]
        for name in (t for t in _list(step.get("tools")) if isinstance(t, str)):
            server, _, bare = name.rpartition(".")
            if name_says_writing(bare):
                for owner in [server] if server else servers:
                    found.setdefault(owner, name)
        return found

    def _check_step_refs(self, planned: StepPlan, template: TemplateField) -> None:
        i, own_id = planned.index, planned.id
        for ref in template.refs:
            if ref.root != "steps" or not ref.path or not isinstance(ref.path[0], str):
                continue
            target = ref.path[0]
            if target == own_id and self.step_index[target] == i:
                self._ref_problem(
                    template,
                    ref,
                    f"{self.where((*self.at, i))} refers to its own output",
                    "self-reference",
                    "a step can read only steps that ran before it",
                )
            elif self.step_index.get(target, -1) > i and target not in planned.needs:
                self._ref_problem(
                    template,
                    ref,
                    f"{self.where((*self.at, i))} reads steps.{target}, which comes later",
                    "forward-reference",
                    f"move step {target!r} before {own_id!r}, or add `needs: [{target}]`",
                )
            elif target not in self.step_index and self._outer_is_later(target):
                assert self.loop is not None
                self._ref_problem(
                    template,
                    ref,
                    f"{self.where((*self.at, i))} reads steps.{target}, which comes after "
                    f"loop {self.loop.id!r}",
                    "forward-reference",
                    f"move step {target!r} before {self.loop.id!r}, or add "
                    f"`needs: [{target}]` to the loop step",
                )

    def _outer_is_later(self, target: str) -> bool:
        """Whether an outer step that nested steps read comes after their loop step, which
        does not wait for it."""
        outer, loop = self.outer, self.loop
        if outer is None or loop is None:
            return False
        if target not in outer.step_index:
            return outer._outer_is_later(target)
        return outer.step_index[target] > loop.index and target not in loop.needs

    def _check_step_tools(self, i: int, step: dict[str, Any]) -> None:
        here = (*self.at, i)
        servers = [s for s in _list(step.get("mcp")) if isinstance(s, str)]
        own_servers = "mcp" in self.written[i]  # an agent's are checked at the agent
        for j, server in enumerate(servers):
            if own_servers and server not in self.servers:
                self.report(
                    (*here, "mcp", j),
                    f"{self.where(here)} uses MCP server {server!r}, which is not declared",
                    "unknown-server",
                    self._server_hint(server),
                )
        tools = [t for t in _list(step.get("tools")) if isinstance(t, str)]
        if (tools or _dict(step.get("tools"))) and not servers:
            self.report(
                (*here, "tools"),
                f"{self.where(here)} lists `tools:` but no `mcp:` servers to take them from",
                "tools-without-mcp",
                "add `mcp: [server]` naming the servers that offer these tools",
            )
        for j, tool in enumerate(tools):
            named = tool.split(".", 1)[0] if "." in tool else None
            if named is not None and named not in self.servers and named not in servers:
                self.report(
                    (*here, "tools", j),
                    f"tool {tool!r} names server {named!r}, which is not declared",
                    "unknown-server",
                    self._server_hint(named),
                )
            elif named is not None and named in self.servers and named not in servers:
                self.report(
                    (*here, "tools", j),
                    f"tool {tool!r} belongs to server {named!r}, which "
                    f"{self.where(here)} does not list in `mcp:`",
                    "unknown-server",
                    f"add {named!r} to `mcp:`",
                )
        choice = _str(step.get("tool_choice"))
        if choice and choice not in TOOL_CHOICES:
            if not servers:
                self.report(
                    (*here, "tool_choice"),
                    f"{self.where(here)} forces tool {choice!r} but offers no tools",
                    "tool-choice-without-tools",
                    "add `mcp: [server]`",
                )
            elif (
                tools
                and choice not in tools
                and not any(t.split(".", 1)[-1] == choice for t in tools)
            ):
                self.report(
                    (*here, "tool_choice"),
                    f"{self.where(here)} forces tool {choice!r}, which is not in its "
                    "`tools:` allow-list",
                    "unknown-tool",
                    did_you_mean(choice, tools),
                )
        elif choice == "required" and not servers:
            self.report(
                (*here, "tool_choice"),
                f"{self.where(here)} requires a tool call but offers no tools",
                "tool-choice-without-tools",
                "add `mcp: [server]`",
            )
        direct = _str(step.get("tool"))
        if direct and "." in direct:
            server = direct.split(".", 1)[0]
            if server not in self.servers:
                self.report(
                    (*here, "tool"),
                    f"{self.where(here)} calls {direct!r}, but server {server!r} is not declared",
                    "unknown-server",
                    self._server_hint(server),
                )
        schema = step.get("output_schema")
        if isinstance(schema, dict):
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as error:
                at = (*here, "output_schema", *error.path)
                self.report(
                    at,
                    f"output_schema of {self.where(here)} is not a valid JSON "
                    f"Schema: {error.message}",
                    "invalid-output-schema",
                    "`type` is one of: string, number, integer, boolean, array, object, null"
                    if at[-1] == "type"
                    else "see https://json-schema.org/understanding-json-schema/",
                )
                return
            for at, ref in _unresolvable_refs(schema):
                self.report(
                    (*here, "output_schema", *at),
                    f"output_schema of {self.where(here)} refers to {ref!r}, which it does "
                    "not contain",
                    "invalid-output-schema",
                    "a $ref must point inside the schema, e.g. #/$defs/item with the item "
                    "declared under $defs",
                )

    def _server_hint(self, server: str) -> str:
        declared = list(self.servers)
        suggestion = did_you_mean(server, declared)
        if not declared:
            return "declare it under `mcp_servers:`"
        listing = "declared servers: " + ", ".join(declared)
        return f"{suggestion} {listing}" if suggestion else listing

    def _check_step_model(self, i: int, step: dict[str, Any], defaults: dict[str, Any]) -> None:
        here = (*self.at, i)
        model = step.get("model")
        if not _model_names(model) and not _model_names(defaults.get("model")):
            self.report(
                here,
                f"{self.where(here)} talks to a model but none is set",
                "no-model",
                "add `model:` to the step, or `defaults: {model: ...}`",
            )
            return
        references = (
            (model, (*here, "model")),
            (defaults.get("model"), ("defaults", "model")),
        )
        for value, at in references:
            for index, name in _model_names(value):
                if name in self.aliases or "/" in name or "@" in name:
                    continue
                suggestion = did_you_mean(name, list(self.aliases))
                if suggestion:
                    self.report(
                        at if index is None else (*at, index),
                        f"model {name!r} is not an alias; it will be used as a model id",
                        "unknown-model-alias",
                        suggestion,
                        severity="warning",
                    )

    # --- graph, outputs -------------------------------------------------------------------

    def _check_cycles(self) -> None:
        for cycle in cycles(self.plan.graph()):
            self._report_cycle(cycle)

    def _report_cycle(self, cycle: list[int]) -> None:
        ids = [str(self.steps[i].get("id")) for i in cycle]
        # a -> b means "a waits for b"; spell it from the earliest step in the file.
        start = cycle.index(min(cycle))
        ordered = ids[start:] + ids[:start]
        spelled = " -> ".join([*ordered, ordered[0]])
        self.report(
            (*self.at, min(cycle), "needs"),
            f"steps wait for each other: {spelled}",
            "needs-cycle",
            "remove one of the `needs:` entries or references in the loop",
        )

    def _check_outputs(self) -> None:
        for template in self.plan.output_fields:
            self._check_field(template)

    # --- templates ---------------------------------------------------------------------------

    def _check_field(
        self, template: TemplateField, *, allow_steps: bool = True, for_each: bool = False
    ) -> None:
        """Check one field's syntax, variables and references."""
        if template.error is not None:
            self._syntax_problem(
                template.path, template.text, template.error, template.is_condition
            )
            return
        if template.tree is None:
            return
        try:
            # finding the names runs Jinja's code generator, which rejects unknown filters/tests
            unknown = templating.unknown_names(template.tree)
        except templating.TemplateSyntaxError as error:
            self._syntax_problem(template.path, template.text, error, template.is_condition)
            return
        for name in sorted(unknown):
            self._name_problem(template, name, template.path, for_each)
        for ref in template.refs:
            self._check_ref(template, ref, allow_steps)
        for use in templating.whole_env_uses(template.tree):
            self._whole_env_problem(template, use)

    def _whole_env_problem(self, template: TemplateField, use: templating.WholeEnvUse) -> None:
        """`env` may only be read one variable at a time, by a name written in the file: only
        those variables reach the templates, and only their values are masked."""
        where = self.where(template.path)
        if use.method is not None:
            message = f"{where} calls env.{use.method}(); env has no methods"
            needle = rf"(?<![\w.])env\s*\.\s*{re.escape(use.method)}\s*\("
        else:
            message = (
                f"{where} uses env as a whole (in a filter, a loop, a test or env[expression]); "
                "templates read environment variables only by name"
            )
            needle = r"(?<![\w.])env(?!\w)(?!\s*(\.\s*\w|\[\s*[\"']))"
        spelled = self.located(template.path)
        source = self.source_of(spelled)
        found = re.search(needle, source.raw(spelled))
        offset = (
            source.position(spelled).start + found.start()
            if found
            else self._line_offset(template.path, use.lineno)
        )
        self.report(
            template.path,
            message,
            "env-by-name",
            'read each variable by its name: env.NAME or env["NAME"] '
            "(with a default: env.NAME | default('...'))",
            offset=offset,
        )

    def _syntax_problem(self, path: JsonPath, text: str, error: Exception, condition: bool) -> None:
        lineno = getattr(error, "lineno", 1) or 1
        offset = None if condition else self._line_offset(path, lineno)
        message = getattr(error, "message", None) or str(error)
        kind = "condition" if condition else "template"
        unknown = re.match(r"No (filter|test) named '([^']+)'", message)
        if isinstance(error, templating.TemplateTooDeepError):
            hint = "simplify it: compute parts in earlier steps, or split the expression"
        elif unknown:
            env = templating.environment()
            names = list(env.filters if unknown[1] == "filter" else env.tests)
            hint = did_you_mean(unknown[2], names) or f"known {unknown[1]}s: " + ", ".join(
                sorted(names)
            )
        elif condition:
            hint = "conditions are bare expressions: if: steps.a.output | length > 0"
        else:
            hint = "check the {{ }} and {% %} pairs"
        self.report(
            path,
            f"{kind} in {self.where(path)} does not parse: {message}",
            "template-syntax",
            hint,
            offset=offset,
        )

    def _name_problem(
        self, template: TemplateField, name: str, path: JsonPath, for_each: bool
    ) -> None:
        if name in templating.ITEM_NAMES:
            if not for_each and not (name == "loop" and self.loop is not None):
                self.report(
                    path,
                    f"{self.where(path)} reads {name!r}, which exists only in a `for_each:` step"
                    + (" or inside a `loop:`" if name == "loop" else ""),
                    "item-outside-for-each",
                    "add `for_each:` to the step, or read the value you meant directly"
                    + (", or move the step into a `loop:` step's steps" if name == "loop" else ""),
                    offset=self._find(template, name),
                )
            elif name == "loop" and not for_each:
                self._check_loop_refs(template)
            return
        if name in self.inputs:
            suggestion: str | None = f"did you mean inputs.{name}?"
        elif self._visible_step(name) is not None:
            suggestion = f"did you mean steps.{name}.output?"
        else:
            suggestion = did_you_mean(name, list(templating.ROOTS))
        self.report(
            path,
            f"{self.where(path)} uses unknown variable {name!r}",
            "unknown-variable",
            suggestion or "templates can read: " + ", ".join(templating.ROOTS),
            offset=self._find(template, name),
        )

    def _check_loop_refs(self, template: TemplateField) -> None:
        """`loop.index` and `loop.previous.INNER` in nested steps: what a loop gives them."""
        assert template.tree is not None
        for ref in templating.references(template.tree, ("loop",)):
            if not ref.path or not isinstance(ref.path[0], str):
                continue
            name = ref.path[0]
            if name not in LOOP_ATTRIBUTES:
                self._ref_problem(
                    template,
                    ref,
                    f"{self.where(template.path)} reads loop.{name}, which does not exist",
                    "unknown-reference",
                    did_you_mean(name, LOOP_ATTRIBUTES)
                    or "loop has: " + ", ".join(LOOP_ATTRIBUTES),
                )
            elif name == "previous" and len(ref.path) > 1:
                inner = ref.path[1]
                if isinstance(inner, str) and inner not in self.step_index:
                    self._ref_problem(
                        template,
                        ref,
                        f"{self.where(template.path)} reads loop.previous.{inner}, but the loop "
                        f"has no step {inner!r}",
                        "unknown-step",
                        did_you_mean(inner, list(self.step_index))
                        or "loop.previous holds the steps of this loop: "
                        + ", ".join(self.step_index),
                    )

    def _check_ref(
        self, template: TemplateField, ref: templating.Reference, allow_steps: bool
    ) -> None:
        where = self.where(template.path)
        if not ref.path or not isinstance(ref.path[0], str):
            return  # a dynamic lookup such as steps[name]: nothing to check statically
        name, rest = ref.path[0], ref.path[1:]
        if ref.root == "inputs" and name not in self.inputs:
            self._ref_problem(
                template,
                ref,
                f"{where} reads undeclared input {name!r}",
                "unknown-input",
                did_you_mean(name, list(self.inputs))
                or f"declare it under `inputs:` ({name}: {{type: string}})",
            )
        elif ref.root == "workflow" and name not in WORKFLOW_ATTRIBUTES:
            self._attribute_problem(template, ref, name, WORKFLOW_ATTRIBUTES)
        elif ref.root == "run" and name not in RUN_ATTRIBUTES:
            self._attribute_problem(template, ref, name, RUN_ATTRIBUTES)
        elif ref.root == "steps":
            if not allow_steps:
                self._ref_problem(
                    template,
                    ref,
                    f"{where} reads steps.{name}, but servers start before any step runs",
                    "step-in-server",
                    "server settings may read inputs and env only",
                )
            elif self._visible_step(name) is None:
                holder = self._nested_id(name)
                self._ref_problem(
                    template,
                    ref,
                    f"{where} reads unknown step {name!r}"
                    + (f", which is inside loop {holder!r}" if holder else ""),
                    "unknown-step",
                    f"outside the loop, read steps.{holder}.output.{name} (its last iteration)"
                    if holder
                    else did_you_mean(name, self._visible_ids()),
                )
            elif rest and rest[0] not in STEP_ATTRIBUTES:
                self._ref_problem(
                    template,
                    ref,
                    f"{where} reads steps.{name}.{rest[0]}; a step has only `output` and `status`",
                    "unknown-reference",
                    did_you_mean(str(rest[0]), STEP_ATTRIBUTES) or f"write steps.{name}.output",
                )
            elif rest[:1] == ("status",) and len(rest) > 1:
                self._ref_problem(
                    template,
                    ref,
                    f"{where} reads steps.{name}.status.{rest[1]}, but a status is a plain "
                    "word (succeeded, failed or skipped)",
                    "unknown-reference",
                    f"compare it: steps.{name}.status == 'succeeded'",
                )
            elif rest[:1] == ("output",) and len(rest) > 1:
                self._check_output_field(template, ref, name, rest[1])

    def _attribute_problem(
        self,
        template: TemplateField,
        ref: templating.Reference,
        name: str,
        allowed: tuple[str, ...],
    ) -> None:
        self._ref_problem(
            template,
            ref,
            f"{self.where(template.path)} reads {ref.root}.{name}, which does not exist",
            "unknown-reference",
            did_you_mean(name, allowed) or f"{ref.root} has: " + ", ".join(allowed),
        )

    def _check_output_field(
        self,
        template: TemplateField,
        ref: templating.Reference,
        step_id: str,
        field_name: str | int,
    ) -> None:
        owner, index = self._owner(step_id) or (self, -1)
        step = owner.steps[index] if index >= 0 else {}
        child = owner.children.get(index)
        loop = _dict(step.get("loop"))
        if loop:  # a loop's output: its nested steps' outputs and the iteration count
            inner = [_str(_dict(s).get("id")) for s in _list(loop.get("steps"))]
            properties = dict.fromkeys([*(i for i in inner if i), LOOP_ITERATIONS])
        elif child is not None:  # a `workflow:` step's output is its file's outputs
            properties = _entries(child.get("outputs"))
        else:
            properties = _dict(_dict(step.get("output_schema")).get("properties"))
        if not properties or not isinstance(field_name, str) or field_name in properties:
            return
        if field_name in _JINJA_DICT_METHODS:
            return
        self._ref_problem(
            template,
            ref,
            f"{self.where(template.path)} reads steps.{step_id}.output."
            f"{field_name}, but "
            + (
                f"loop {step_id!r} has no step"
                if loop
                else f"the workflow of {step_id!r} declares no output"
                if child is not None
                else f"the output_schema of {step_id!r} declares no"
            )
            + f" {field_name!r}",
            "unknown-output-field",
            did_you_mean(field_name, list(properties))
            or "declared fields: " + ", ".join(properties),
        )

    def _ref_problem(
        self,
        template: TemplateField,
        ref: templating.Reference,
        message: str,
        rule: str,
        hint: str | None,
    ) -> None:
        self.report(template.path, message, rule, hint, offset=self._find(template, ref))

    # --- positions inside a template ----------------------------------------------------------

    def _find(self, template: TemplateField, ref: templating.Reference | str) -> int | None:
        """The file offset of a reference inside the field's raw text, when it can be found."""
        spelled = self.located(template.path)  # a nested step's field: where the file has it
        source = self.source_of(spelled)
        raw = source.raw(spelled)
        base = source.position(spelled).start
        needles = (
            [ref]
            if isinstance(ref, str)
            else [
                ref.dotted,
                ".".join([ref.root, *map(str, ref.path[:1])]),
                str(ref.path[0]) if ref.path else ref.root,
            ]
        )
        for needle in needles:
            index = _find_word(raw, needle)
            if index >= 0:
                return base + index
        return None

    def _line_offset(self, path: JsonPath, lineno: int) -> int | None:
        """The file offset of line `lineno` of a template field (block scalars map exactly)."""
        path = self.located(path)
        source = self.source_of(path)
        raw = source.raw(path)
        if not raw:
            return None
        base = source.position(path).start
        lines = raw.split("\n")
        index = lineno if raw.lstrip()[:1] in ("|", ">") else lineno - 1
        index = max(0, min(index, len(lines) - 1))
        offset = sum(len(line) + 1 for line in lines[:index])
        line = lines[index]
        return base + offset + (len(line) - len(line.lstrip()))


_JINJA_DICT_METHODS = ("items", "keys", "values", "get")


def _find_word(text: str, needle: str) -> int:
    match = re.search(r"(?<![\w.])" + re.escape(needle) + r"(?!\w)", text)
    return match.start() if match else -1


def _unresolvable_refs(schema: dict[str, Any]) -> Iterator[tuple[JsonPath, str]]:
    """`$ref`s of a schema that do not resolve within it (remote ones are never fetched)."""
    from referencing import Registry, Resource
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    base = "urn:lmflow:output-schema"
    resource = Resource.from_contents(schema, default_specification=DRAFT202012)
    resolver = Registry().with_resource(base, resource).resolver(base_uri=base)

    def walk(value: Any, path: JsonPath) -> Iterator[tuple[JsonPath, str]]:
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except Unresolvable:
                    yield (*path, "$ref"), ref
            for key, item in value.items():
                yield from walk(item, (*path, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from walk(item, (*path, i))

    yield from walk(schema, ())


def _written(raw_steps: list[Any]) -> list[dict[str, Any]]:
    """Each step as written (a malformed one as empty); `_Checker.steps` holds them with
    their prompt files and agents."""
    return [s if isinstance(s, dict) else {} for s in raw_steps]


def _plan_holds(plan: Plan, step_id: str) -> bool:
    """Whether a plan's steps, or those nested in them, have the id."""
    return any(
        s.id == step_id or (s.body is not None and _plan_holds(s.body, step_id)) for s in plan.steps
    )

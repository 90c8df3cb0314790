"""`--resume`: reuse what succeeded in an earlier run, and only what is certainly unchanged.

Each step (and each `for_each` item) gets a fingerprint when it is about to run: a hash of
its definition, the settings it inherits, the servers it uses, the inputs it reads and the
outputs and statuses of the steps it waits for. The fingerprint goes into its
`step_finished` (`item_finished`) event. A resumed run reuses a recorded output whose
fingerprint equals the new one: a changed workflow, input or upstream output gives another
fingerprint, so a stale result is never reused. Environment values are not hashed (they
are secrets); neither is anything the step reads through a tool.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, LmflowError
from .runlog import MASK, read_events
from .spec.model import AgentStep, Loop, Step, Workflow, WorkflowStep, thawed
from .step_images import step_images
from .templating import TemplateError


@dataclass(frozen=True)
class Reusable:
    """The outputs of an earlier run that may be reused, by fingerprint."""

    run_id: str
    outputs: Mapping[str, Any]
    conversations: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The conversations of steps a later step continues (`conversation` of their
    `step_finished`), by fingerprint: a reused step hands its conversation on."""


def load_reusable(run_dir: Path) -> Reusable:
    """The succeeded steps and items of the run in `run_dir`, from its events.jsonl. An
    output that holds a masked secret is not reusable (the log does not have its value)."""
    path = run_dir / "events.jsonl"
    if not path.is_file():
        raise ConfigurationError(
            f"cannot resume run {run_dir.name}: it has no events.jsonl",
            hint="a run with --no-log or --log elsewhere cannot be resumed",
        )
    outputs: dict[str, Any] = {}
    conversations: dict[str, Any] = {}
    for event in read_events(path).events:
        fingerprint = event.get("fingerprint")
        if (
            event.get("type") in ("step_finished", "item_finished")
            and event.get("status") == "succeeded"
            and isinstance(fingerprint, str)
            and MASK not in json.dumps(event.get("output"), ensure_ascii=False)
        ):
            outputs[fingerprint] = event.get("output")
            conversation = event.get("conversation")
            if isinstance(conversation, list) and MASK not in json.dumps(conversation):
                conversations[fingerprint] = tuple(conversation)
    return Reusable(run_dir.name, outputs, conversations)


def step_fingerprint(
    workflow: Workflow, step: Step, context: Mapping[str, Any], *, scope: str = ""
) -> str:
    """What a step's result depends on, hashed. `context` is the step's template context;
    `scope` says where the step is nested (`PARENT` for a sub-workflow's steps, `LOOP[N]`
    for an iteration's). A nested step's hash also holds its place and what its loop gave
    it (`loop.index`, `loop.previous`), so the same step in another iteration, or after an
    earlier iteration answered differently, is another step to `--resume`."""
    definition, reads = _definition(workflow, step)
    inputs = context["inputs"]
    steps = context["steps"]
    return _digest(
        {
            **({"scope": scope, "loop": context.get("loop")} if scope else {}),
            "definition": definition,
            "inputs": {k: v for k, v in inputs.items() if reads is None or k in reads},
            "waits_for": {
                dep: steps.get(dep) for dep in sorted(workflow.plan.steps[step.index].waits_for)
            },
            **image_digests(workflow, step, context),
        }
    )


def image_digests(workflow: Workflow, step: Step, context: Mapping[str, Any]) -> dict[str, Any]:
    """The content of the images a step (or item, with its context) sends, as a fingerprint
    part (a file may change under the same name): their hashes, or why they cannot be read
    (the step then fails, and is not reused). Empty for a step without images, so the
    fingerprints of other steps stay as they were."""
    if not isinstance(step, AgentStep) or not step.images:
        return {}
    try:
        images = step_images(step.images, context, workflow.path, _unchanged)
    except (LmflowError, TemplateError) as error:
        return {"images": str(error)}
    return {"images": [i if isinstance(i, str) else i.digest for i in images]}


def _unchanged(text: str) -> str:
    return text


_definitions: dict[int, dict[int, tuple[str, frozenset[str] | None]]] = {}
"""Per workflow object (by id, dropped when it is collected), per step index: `_definition`."""


def _definition(workflow: Workflow, step: Step) -> tuple[str, frozenset[str] | None]:
    """The part of a step's fingerprint its workflow alone decides: the hash of its
    definition, settings and servers, and the inputs its templates read (None: any, the
    step reads `inputs` as a whole). Computed once per workflow and step, since a process
    that runs a workflow many times (serve, batch) would otherwise hash it again each run."""
    known = _definitions.get(id(workflow))
    if known is None:
        known = _definitions[id(workflow)] = {}
        weakref.finalize(workflow, _definitions.pop, id(workflow), None)
    found = known.get(step.index)
    if found is None:
        refs = [ref for f in workflow.plan.steps[step.index].fields for ref in f.refs]
        dynamic = any(ref.root == "inputs" and not ref.path for ref in refs)
        reads = frozenset(
            ref.path[0]
            for ref in refs
            if ref.root == "inputs" and ref.path and isinstance(ref.path[0], str)
        )
        digest = _digest(
            {
                "step": _step_fields(step),
                "model": workflow.step_model(step),
                "defaults": _fields(workflow.defaults),
                "servers": {
                    name: _fields(workflow.mcp_servers[name])
                    for name in step.servers
                    if name in workflow.mcp_servers
                },
            }
        )
        found = known[step.index] = (digest, None if dynamic else reads)
    return found


def item_fingerprint(
    parent: str, index: int, value: Any, images: Mapping[str, Any] | None = None
) -> str:
    """One item of a `for_each` step: its step's fingerprint (`parent`), the item and its
    place, and the content of the images it sends (`image_digests`)."""
    return _digest({"step": parent, "index": index, "item": value, **(images or {})})


SCHEDULING_ONLY = frozenset(
    {"index", "name", "timeout", "concurrency", "fail_fast", "continue_on_error"}
    | {"max_concurrent_calls"}
)
"""Settings that decide when and how long a step may run, or what happens after it fails,
but not what it answers: resuming with a lower concurrency or a longer timeout (the usual
cure for a run that failed on them) still reuses what succeeded."""


def _step_fields(step: Step) -> dict[str, Any]:
    """A step's definition; a `workflow:` step's included workflow by what its steps, inputs
    and outputs are, so an edited file (or one of its prompt files) is a changed step."""
    fields = _fields(step)
    if isinstance(step, WorkflowStep):
        child = step.child
        fields["child"] = {
            "steps": [_definition(child, inner)[0] for inner in child.steps],
            "inputs": {name: _fields(spec) for name, spec in child.inputs.items()},
            "outputs": thawed(child.outputs),
        }
    return fields


def _fields(value: Any) -> dict[str, Any]:
    """A frozen dataclass as plain data, without its scheduling-only settings
    (`dataclasses.asdict` cannot copy its read-only mappings); nested steps too."""
    return {
        f.name: _plain(getattr(value, f.name))
        for f in dataclasses.fields(value)
        if f.name not in SCHEDULING_ONLY
    }


def _plain(value: Any) -> Any:
    """A setting as plain data; a loop's nested steps as their own fields."""
    if isinstance(value, Loop):
        return {**_fields(value), "steps": [_step_fields(step) for step in value.steps]}
    return thawed(value)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]

"""The spans of a run, made from its run-log events (see otel.py for the tree and how to
turn it on). Imports the OpenTelemetry SDK and OTLP exporter: the `otel` extra."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .runlog import Event
from .speed import response_speed

MAX_ATTRIBUTE_CHARS = 8192
"""Tool arguments and results longer than this are cut in the trace (the log has them)."""
EXPORT_TIMEOUT = 5.0
"""Seconds the export may take, retries included: a receiver that is down delays the end of
the command by at most this."""
_ITERATION = re.compile(r"\[\d+\]$")
"""A loop iteration at the end of a scoped step id (`fix[2]`): its steps' parent is `fix`."""


def _traces_url(endpoint: str) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT semantics: the base URL; traces go to /v1/traces."""
    return endpoint.rstrip("/") + "/v1/traces"


def _nanoseconds(stamp: Any) -> int:
    """An event time (epoch seconds, or ISO 8601 in a stored log) in nanoseconds."""
    if isinstance(stamp, (int, float)):
        return int(stamp * 1e9)
    return int(datetime.fromisoformat(str(stamp)).timestamp() * 1e9)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[:MAX_ATTRIBUTE_CHARS] + "…"


class RunTracer:
    """Run-log sink: events in, spans out. `close()` sends them; it returns whether the
    receiver took them, and says why not in `failure`."""

    def __init__(self, endpoint: str | None = None) -> None:
        from . import __version__

        # Ended spans are kept here and sent in one export when the run is over.
        self._kept = InMemorySpanExporter()
        named = bool(os.environ.get("OTEL_SERVICE_NAME"))  # the standard variable wins
        resource = Resource.create({} if named else {"service.name": "lmflow"})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(self._kept))
        self._provider = provider
        self._tracer = provider.get_tracer("lmflow", __version__)
        url = _traces_url(endpoint) if endpoint else None
        self._exporter = OTLPSpanExporter(endpoint=url, timeout=EXPORT_TIMEOUT)
        self.endpoint = url or "the OTEL_EXPORTER_OTLP_* endpoint"
        self.failure: str | None = None
        self._run: Span | None = None
        self._steps: dict[str, Span] = {}
        self._items: dict[tuple[str, int], Span] = {}
        self._chats: dict[tuple[str, Any], Span] = {}
        self._tools: dict[tuple[str, Any, Any], Span] = {}
        self._last = 0
        self._closed = False

    def __call__(self, event: Event) -> None:
        self.feed(event.as_dict() | {"time": event.time})

    def feed(self, event: Mapping[str, Any]) -> None:
        """One event, as a log line holds it (a live Event goes through `__call__`)."""
        kind, step, item = event.get("type"), event.get("step"), event.get("item")
        at = _nanoseconds(event.get("time"))
        self._last = max(self._last, at)
        if kind == "run_started":
            self._run = self._start(
                f"invoke_workflow {event.get('workflow')}",
                None,
                at,
                {
                    "gen_ai.operation.name": "invoke_workflow",
                    "gen_ai.workflow.name": str(event.get("workflow")),
                    "lmflow.run.id": str(event.get("run_id")),
                    "lmflow.workflow.path": str(event.get("path")),
                },
            )
        elif kind == "run_finished":
            self._end_all(at)
            if self._run is not None:
                self._run.set_attribute("lmflow.run.status", str(event.get("status")))
                self._usage(self._run, event.get("usage"))
                self._finish(self._run, at, event.get("status") == "succeeded", event.get("error"))
                self._run = None
        elif step is None:
            return
        elif kind == "step_started":
            self._steps[step] = self._start_step(step, event, at)
        elif kind == "item_started" and isinstance(item, int):
            self._items[(step, item)] = self._start(
                f"item {item}", self._steps.get(step), at, {"lmflow.item": item}
            )
        elif kind == "llm_request":
            self._start_chat(step, item, event, at)
        elif kind == "llm_response":
            self._end_chat(step, item, event, at)
        elif kind == "tool_call":
            self._tools[(step, item, event.get("id"))] = self._start(
                f"execute_tool {event.get('name')}",
                self._parent(step, item),
                at,
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": str(event.get("name")),
                    "gen_ai.tool.call.id": str(event.get("id")),
                    "gen_ai.tool.type": "extension",
                    "gen_ai.tool.call.arguments": _text(event.get("arguments")),
                },
            )
        elif kind == "tool_result":
            span = self._tools.pop((step, item, event.get("id")), None)
            if span is not None:
                span.set_attribute("gen_ai.tool.call.result", _text(event.get("content")))
                failed = bool(event.get("is_error"))
                self._finish(
                    span, at, not failed, "the tool answered with an error" if failed else None
                )
        elif kind == "item_finished" and isinstance(item, int):
            span = self._items.pop((step, item), None)
            if span is not None:
                self._finish(span, at, event.get("status") != "failed", event.get("error"))
        elif kind == "step_finished":
            self._end_step(step, event, at)

    def _start(
        self,
        name: str,
        parent: Span | None,
        at: int,
        attributes: Mapping[str, Any],
        kind: Any = None,
    ) -> Span:
        parent = parent or self._run
        context = trace.set_span_in_context(parent) if parent is not None else None
        if context is None:
            context = otel_context.Context()  # a root: never the caller's current span
        return self._tracer.start_span(
            name,
            context=context,
            kind=kind or SpanKind.INTERNAL,
            attributes={k: v for k, v in attributes.items() if v is not None},
            start_time=at,
        )

    @staticmethod
    def _finish(span: Span, at: int, ok: bool, error: Any = None) -> None:
        if not ok:
            span.set_status(Status(StatusCode.ERROR, _text(error) if error else None))
            span.set_attribute("error.type", "lmflow.failed")
        span.end(end_time=at)

    @staticmethod
    def _usage(span: Span, usage: Any) -> None:
        if isinstance(usage, Mapping):
            span.set_attribute("gen_ai.usage.input_tokens", int(usage.get("prompt_tokens") or 0))
            span.set_attribute(
                "gen_ai.usage.output_tokens", int(usage.get("completion_tokens") or 0)
            )

    def _parent(self, step: str, item: Any) -> Span | None:
        return self._items.get((step, item)) if isinstance(item, int) else self._steps.get(step)

    def _start_step(self, step: str, event: Mapping[str, Any], at: int) -> Span:
        attributes: dict[str, Any] = {
            "lmflow.step.id": step,
            "lmflow.step.kind": str(event.get("kind")),
            "lmflow.step.name": event.get("name"),
        }
        if event.get("kind") == "agent":
            attributes |= {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": step,
                "gen_ai.request.model": event.get("model"),
            }
        # `fix[2]/review` runs inside loop step `fix`, `fix[2]/lint/check` inside `fix[2]/lint`
        outer, nested, _ = step.rpartition("/")
        parent = self._steps.get(_ITERATION.sub("", outer)) if nested else None
        return self._start(f"step {step}", parent, at, attributes)

    def _end_step(self, step: str, event: Mapping[str, Any], at: int) -> None:
        span = self._steps.pop(step, None)
        if span is None:  # never started: skipped, or reused by --resume
            span = self._start(f"step {step}", None, at, {"lmflow.step.id": step})
        status = str(event.get("status"))
        span.set_attribute("lmflow.step.status", status)
        if event.get("reason"):
            span.set_attribute("lmflow.step.skip_reason", _text(event["reason"]))
        self._usage(span, event.get("usage"))
        self._finish(span, at, status != "failed", event.get("error"))

    def _start_chat(self, step: str, item: Any, event: Mapping[str, Any], at: int) -> None:
        params = event.get("params") or {}
        self._chats[(step, item)] = self._start(
            f"chat {event.get('model')}",
            self._parent(step, item),
            at,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": str(event.get("model")),
                "gen_ai.request.temperature": params.get("temperature"),
                "gen_ai.request.max_tokens": params.get("max_tokens"),
                "lmflow.round": event.get("round"),
            },
            kind=SpanKind.CLIENT,
        )

    def _end_chat(self, step: str, item: Any, event: Mapping[str, Any], at: int) -> None:
        span = self._chats.pop((step, item), None)
        if span is None:
            return
        self._usage(span, event.get("usage"))
        if event.get("finish_reason"):
            span.set_attribute("gen_ai.response.finish_reasons", [str(event["finish_reason"])])
        ttft, speed = response_speed(event)
        if ttft is not None:
            span.set_attribute("lmflow.time_to_first_token", ttft)
        if speed is not None:
            span.set_attribute("lmflow.tokens_per_second", speed)
        span.end(end_time=at)

    def _end_all(self, at: int) -> None:
        """Spans whose end never came (an interrupted run) end with the run, innermost first."""
        open_spans = [
            *self._tools.values(),
            *self._chats.values(),
            *self._items.values(),
            *self._steps.values(),
        ]
        for span in open_spans:
            self._finish(span, at, False, "the run ended first")
        self._tools.clear()
        self._chats.clear()
        self._items.clear()
        self._steps.clear()

    def close(self) -> bool:
        """Send the trace (once). False, with `failure` set, when the receiver did not take it."""
        if self._closed:
            return self.failure is None
        self._closed = True
        self._end_all(self._last)
        if self._run is not None:
            self._finish(self._run, self._last, False, "the run log ended before run_finished")
            self._run = None
        try:
            result = self._exporter.export(self._kept.get_finished_spans())
        except Exception as error:  # the exporter's own errors: a refused connection, ...
            self.failure = f"{type(error).__name__}: {error}"
        else:
            if result != SpanExportResult.SUCCESS:
                self.failure = f"{self.endpoint} did not accept the trace"
        finally:
            self._exporter.shutdown()
            self._provider.shutdown()
        return self.failure is None

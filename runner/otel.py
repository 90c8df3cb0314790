"""OpenTelemetry traces of a run, built from its run-log events (the `otel` extra).

A run-log sink: every span is made from events, with the events' own times, so a live run
and a replayed one give the same tree, and the trace holds exactly what the log holds —
secrets are masked before any sink sees an event. The tree follows the OpenTelemetry GenAI
semantic conventions:

    invoke_workflow <workflow>            the run
      step <id>                           each step (invoke_agent for a model step)
        [item <n>]                        each `for_each` item
          chat <model>                    each model request and its answer
          execute_tool <tool>             each tool call and its result

The spans are sent once, when the run has finished, to an OTLP/HTTP endpoint (protobuf):
`--otel URL` or the standard OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, EnvironmentNotReadyError

if TYPE_CHECKING:
    from .otel_trace import RunTracer

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def endpoint_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The endpoint the standard variables name, if any."""
    environ = os.environ if environ is None else environ
    return next((environ[name] for name in ENDPOINT_VARIABLES if environ.get(name)), None)


def trace_sink(endpoint: str | None = None) -> RunTracer:
    """A sink that exports the run's trace to `endpoint` (the base URL of an OTLP/HTTP
    receiver, as in OTEL_EXPORTER_OTLP_ENDPOINT), or to what the standard variables say.
    The OpenTelemetry SDK is imported only now: untraced runs never load it."""
    if endpoint is None and endpoint_from_environment() is None:
        raise ConfigurationError(
            "no OpenTelemetry endpoint", hint="pass --otel URL or set OTEL_EXPORTER_OTLP_ENDPOINT"
        )
    try:
        from .otel_trace import RunTracer
    except ImportError:
        raise EnvironmentNotReadyError(
            "OpenTelemetry export needs the otel extra, which is not installed",
            hint="pip install 'lmflow-runner[otel]' (or unset OTEL_EXPORTER_OTLP_ENDPOINT)",
        ) from None
    return RunTracer(endpoint)


def export_events(events: Iterable[Mapping[str, Any]], endpoint: str | None = None) -> RunTracer:
    """Trace a stored run log (events.jsonl lines) after the fact; returns the closed tracer."""
    tracer = trace_sink(endpoint)
    for event in events:
        tracer.feed(event)
    tracer.close()
    return tracer

"""How fast a model answered, read from its `llm_response` event: the server's own figures
when the event carries them, else worked out from the tokens and the time the request took.
The console, the HTML report and the trace all read speed through here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def response_speed(data: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(time to first token, tokens per second) of one `llm_response`: what the client
    measured (`served`: `ttft_s`, `tokens_per_s`, see docs/runlog.md), else completion tokens
    over the request's `served.seconds`. A replayed answer has no `served`: no server
    produced it in any time worth telling, so it has no speed."""
    served = data.get("served")
    if not isinstance(served, Mapping):
        return None, None
    ttft = _number(served, "ttft_s")
    speed = _number(served, "tokens_per_s")
    seconds = _number(served, "seconds")
    if speed is None and seconds:
        completion = (data.get("usage") or {}).get("completion_tokens")
        if isinstance(completion, (int, float)) and completion > 0:
            speed = completion / seconds
    return ttft, speed


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None

"""How fast a model answered, read from its `llm_response` event: the server's own figures
when the event carries them, else worked out from the tokens and the time the request took.
The console, the HTML report and the trace all read speed through here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def response_speed(
    data: Mapping[str, Any], seconds: float | None
) -> tuple[float | None, float | None]:
    """(time to first token, tokens per second) of one `llm_response` (its fields, at the
    top or under `stats`); without a reported speed, completion tokens over `seconds`."""
    stats = data.get("stats")
    stats = stats if isinstance(stats, Mapping) else {}
    ttft = _number(data, stats, "ttft", "time_to_first_token")
    speed = _number(data, stats, "tokens_per_second")
    if speed is None and seconds:
        completion = (data.get("usage") or {}).get("completion_tokens")
        if isinstance(completion, (int, float)) and completion > 0:
            speed = completion / seconds
    return ttft, speed


def _number(data: Mapping[str, Any], stats: Mapping[str, Any], *keys: str) -> float | None:
    for source in (data, stats):
        for key in keys:
            value = source.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None

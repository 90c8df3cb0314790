"""Benchmark: a continued conversation re-sent whole (chat completions, what `continue:`
does) against sending only the new message (what `/v1/responses` with
`previous_response_id` would send).

Run: python tests/bench/bench_continue.py [--repeat N]
     (not collected by pytest: the name is bench_*)

What differs between the two, and what does not:

- The server's work is the same. To answer, the model needs the history in its KV cache.
  LM Studio and llama.cpp keep a slot's cache and reuse the longest common prefix of the
  next prompt, so a re-sent history that the slot still holds is not computed again; with
  `previous_response_id` the server looks the conversation up and needs the same cache.
  When the cache was evicted (another conversation used the slot), both must prefill the
  whole history again.
- What differs is moving the history: encoding, sending and parsing it on every request.

This measures that part for real over loopback HTTP against the fake LM Studio (which
parses every request's JSON like a server), for histories of growing length, and prints
it next to the time a small local model takes for the same turn under a latency model
(prefill of the new prompt only, at `--prefill` tokens/s, plus `--completion` tokens at
`--decode` tokens/s). The share is the upper bound of what `previous_response_id` could
save per request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `fakes`

from fakes.lmstudio import FakeLMStudio

from runner.chat import ChatRequest, Message
from runner.lmstudio import LMStudioClient

MODEL = "qwen/qwen3-coder-30b"
CHARS_PER_TOKEN = 4
NEW_PROMPT = "Now make it shorter, and keep the tone."
HISTORIES = (1_000, 8_000, 32_000, 128_000)


def history(tokens: int) -> tuple[Message, ...]:
    """A conversation of about `tokens` tokens: turns of ~500 tokens each."""
    turn = "word " * (500 * CHARS_PER_TOKEN // 5)
    messages: list[Message] = [{"role": "system", "content": "You are a careful reviewer."}]
    for index in range(max(1, tokens // 500)):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": turn})
    return tuple(messages)


async def median_request(
    client: LMStudioClient, messages: tuple[Message, ...], repeat: int
) -> float:
    request = ChatRequest(MODEL, (*messages, {"role": "user", "content": NEW_PROMPT}))
    await client.chat(request)  # warm: the connection is open, the route known
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await client.chat(request)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def main(url: str, repeat: int, turn_seconds: float) -> None:
    async with LMStudioClient(url, stream=True) as client:
        alone = await median_request(client, (), repeat)
        print(f"only the new message (previous_response_id): {alone * 1000:8.2f} ms")
        print(f"a turn of the modelled local model:          {turn_seconds * 1000:8.0f} ms\n")
        print(f"{'history':>10}  {'re-sent':>10}  {'extra':>9}  {'x alone':>8}  {'of a turn':>9}")
        for tokens in HISTORIES:
            whole = await median_request(client, history(tokens), repeat)
            extra = whole - alone
            print(
                f"{tokens:>8,} t  {whole * 1000:>7.2f} ms  {extra * 1000:>6.2f} ms  "
                f"{whole / alone:>7.1f}x  {extra / turn_seconds:>8.2%}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--prefill", type=float, default=1000.0, help="prompt tokens/s")
    parser.add_argument("--decode", type=float, default=40.0, help="completion tokens/s")
    parser.add_argument("--completion", type=int, default=200, help="tokens of the answer")
    args = parser.parse_args()
    new_tokens = len(NEW_PROMPT) / CHARS_PER_TOKEN
    turn = new_tokens / args.prefill + args.completion / args.decode
    with FakeLMStudio() as lm:
        asyncio.run(main(lm.url, args.repeat, turn))

"""Embed steps (`embed:`): texts in, embedding vectors out, from an embedding model.

The texts go to the model in batches of the step's `batch_size`, several batches at once
(up to `defaults.concurrency`), and come back in input order. Each batch is told as an
`embed_request` and an `embed_response` event; the responses give the number and dimension
of the vectors, never the vectors themselves (the step's output holds those).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from . import templating
from .chat import EmbeddingModel, EmbedRequest, EmbedResponse, Usage
from .errors import ConfigurationError, LmflowError, StepFailedError
from .runlog import StepEmit
from .spec.model import EmbedStep, thawed


@dataclass(frozen=True)
class EmbedOutcome:
    """The step output (one vector, or a list of them) and the tokens the model counted."""

    output: Any
    usage: Usage


def texts_of(step: EmbedStep, context: Mapping[str, Any]) -> str | list[str]:
    """The rendered `embed:`: one text, or a list of texts. Anything else fails the step,
    saying which item is not a text."""
    value = templating.render_value(thawed(step.embed), context)
    if isinstance(value, str):
        return str(value)
    if not isinstance(value, list):
        raise StepFailedError(
            f"embed gave {_kind(value)}, not a text or a list of texts",
            hint="make it a text, a list of texts, or map the items to text, e.g. "
            "`{{ docs | map(attribute='text') | list }}`",
        )
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise StepFailedError(
                f"embed[{index}] is {_kind(item)}, not a text",
                hint="every item to embed must be a text: render it, e.g. "
                "`{{ items | map('tojson') | list }}`",
            )
    return [str(item) for item in value]


async def run_step(
    step: EmbedStep,
    context: Mapping[str, Any],
    *,
    model: Any,
    model_id: str,
    concurrency: int,
    timeout: float | None,
    emit: StepEmit,
) -> EmbedOutcome:
    """Embed the step's texts with `model` (an `EmbeddingModel`): a vector for a text, a list
    of vectors for a list. Raises an `LmflowError` when the model fails, answers something
    other than one vector per text, or all of it takes longer than `timeout` seconds."""
    embedder = _embedder(model)
    texts = texts_of(step, context)
    batch = [texts] if isinstance(texts, str) else texts
    batches = [batch[i : i + step.batch_size] for i in range(0, len(batch), step.batch_size)]
    try:
        with anyio.fail_after(timeout):
            answers = await _embed_batches(embedder, model_id, batches, concurrency, emit)
    except TimeoutError:
        raise StepFailedError(
            f"no vectors for the {len(batch)} text(s) within the timeout of {timeout:g} s",
            hint="raise the step's `timeout:`, or lower `batch_size` if one request is slow",
        ) from None
    vectors = [list(vector) for answer in answers for vector in answer.vectors]
    usage = sum((answer.usage for answer in answers), Usage())
    return EmbedOutcome(vectors[0] if isinstance(texts, str) else vectors, usage)


def _embedder(model: Any) -> EmbeddingModel:
    if not isinstance(model, EmbeddingModel):
        raise ConfigurationError(
            f"this run's model client ({type(model).__name__}) cannot compute embeddings",
            hint="run embed steps against LM Studio or a cassette recorded from it",
        )
    return model


async def _embed_batches(
    model: EmbeddingModel,
    model_id: str,
    batches: Sequence[list[str]],
    concurrency: int,
    emit: StepEmit,
) -> list[EmbedResponse]:
    """Every batch's answer in batch order, at most `concurrency` requests at once; the
    first failure stops the batches still running and is raised."""
    answers: list[EmbedResponse | None] = [None] * len(batches)
    failures: list[LmflowError] = []
    limit = anyio.CapacityLimiter(concurrency)

    async def one(index: int, texts: list[str], group: anyio.abc.TaskGroup) -> None:
        async with limit:
            emit("embed_request", {"batch": index, "model": model_id, "texts": texts})
            try:
                answer = await model.embed(EmbedRequest(model_id, tuple(texts)))
                _check(answer, len(texts))
            except LmflowError as error:
                failures.append(error)
                group.cancel_scope.cancel()
                return
            usage = answer.usage.as_dict()
            emit("embed_response", {"batch": index, **summary(answer.vectors), "usage": usage})
            answers[index] = answer

    async with anyio.create_task_group() as group:
        for index, texts in enumerate(batches):
            group.start_soon(one, index, texts, group)
    if failures:
        raise failures[0]
    return [answer for answer in answers if answer is not None]


def _check(answer: EmbedResponse, count: int) -> None:
    """One vector per text, all of one length: what the filters that compare them need."""
    if len(answer.vectors) != count:
        raise StepFailedError(f"the model gave {len(answer.vectors)} vectors for {count} texts")
    if len({len(vector) for vector in answer.vectors}) > 1:
        raise StepFailedError("the model gave vectors of different lengths in one answer")


def summary(vectors: Sequence[Sequence[float]]) -> dict[str, int]:
    """What a list of vectors is, in two numbers: how many, and how long each is."""
    return {"vectors": len(vectors), "dimension": len(vectors[0]) if vectors else 0}


def _kind(value: Any) -> str:
    return "nothing (null)" if value is None else f"a {type(value).__name__}"

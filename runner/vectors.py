"""Template filters that compare embedding vectors (the output of `embed:` steps).

With them a workflow picks the documents most relevant to a question without code:

    {{ docs | nearest_by(steps.embed_docs.output, steps.embed_question.output, k=3) }}

Pure Python (a few hundred vectors of a few hundred numbers are compared in milliseconds),
so the sandboxed template environment needs no dependency. Every misuse (not a vector,
vectors of different dimensions, as many items as vectors) is a `FilterArgumentError` that
says which argument and how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from jinja2 import Undefined
from jinja2.exceptions import FilterArgumentError

Vector = Sequence[float]

SAME_MODEL = "embed both with the same model: vectors of different models cannot be compared"


def cosine(a: Any, b: Any) -> float:
    """The cosine similarity of two vectors: 1 for the same direction, 0 for unrelated
    (also when either is all zeros), -1 for opposite."""
    first, second = (
        _vector(a, "cosine", "the first vector"),
        _vector(b, "cosine", "the second vector"),
    )
    if len(first) != len(second):
        raise FilterArgumentError(
            f"cosine: the vectors have different dimensions ({len(first)} and "
            f"{len(second)}); {SAME_MODEL}"
        )
    return _cosine(first, second)


def nearest(vectors: Any, query: Any, k: int = 3) -> list[int]:
    """The indices of the `k` vectors most similar to `query`, most similar first (ties in
    list order)."""
    return [index for index, _ in _ranked(vectors, query, k, "nearest")]


def nearest_by(items: Any, vectors: Any, query: Any, k: int = 3) -> list[Any]:
    """The `k` items whose vectors (`vectors[i]` belongs to `items[i]`) are most similar to
    `query`, most similar first."""
    if not isinstance(items, (list, tuple)):
        raise FilterArgumentError(
            f"nearest_by: the items are {_kind(items)}, not a list "
            "(write `items | nearest_by(vectors, query)`)"
        )
    if isinstance(vectors, (list, tuple)) and len(items) != len(vectors):
        raise FilterArgumentError(
            f"nearest_by: {len(items)} items but {len(vectors)} vectors; give the vectors of "
            "exactly these items, in the same order (embed the same list)"
        )
    return [items[index] for index, _ in _ranked(vectors, query, k, "nearest_by")]


def similarities(vectors: Any, query: Any) -> list[float]:
    """The cosine similarity of each vector to `query`, in list order (for thresholds and
    for telling near-duplicates apart)."""
    return [score for _, score in _scores(vectors, query, "similarities")]


FILTERS: dict[str, Callable[..., Any]] = {
    "cosine": cosine,
    "nearest": nearest,
    "nearest_by": nearest_by,
    "similarities": similarities,
}
"""The filters templates get (runner/templating.py registers them)."""


def _ranked(vectors: Any, query: Any, k: Any, name: str) -> list[tuple[int, float]]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise FilterArgumentError(f"{name}: k must be a whole number of at least 1, not {k!r}")
    scores = _scores(vectors, query, name)
    return sorted(scores, key=lambda pair: (-pair[1], pair[0]))[:k]


def _scores(vectors: Any, query: Any, name: str) -> list[tuple[int, float]]:
    wanted = _vector(query, name, "the query")
    if not isinstance(vectors, (list, tuple)):
        raise FilterArgumentError(f"{name}: the vectors are {_kind(vectors)}, not a list")
    scores = []
    for index, raw in enumerate(vectors):
        vector = _vector(raw, name, f"vector {index}")
        if len(vector) != len(wanted):
            raise FilterArgumentError(
                f"{name}: vector {index} has {len(vector)} dimensions, the query "
                f"{len(wanted)}; {SAME_MODEL}"
            )
        scores.append((index, _cosine(vector, wanted)))
    return scores


def _vector(value: Any, name: str, what: str) -> list[float]:
    """`value` as a list of floats, or the error that says what it is instead."""
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return [float(x) for x in value]
        if isinstance(value[0], (list, tuple)):
            raise FilterArgumentError(
                f"{name}: {what} is a list of vectors, not one vector (the output of an "
                "`embed:` step given a list); pick one, e.g. `output[0]`"
            )
    raise FilterArgumentError(
        f"{name}: {what} is {_kind(value)}, not a vector (a list of numbers: the output of "
        "an `embed:` step)"
    )


def _cosine(a: Vector, b: Vector) -> float:
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    if not norms:
        return 0.0
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / norms


def _kind(value: Any) -> str:
    if isinstance(value, Undefined):
        str(value)  # an undefined name fails as everywhere else: "'x' is undefined"
    if isinstance(value, (list, tuple)) and not value:
        return "an empty list"
    return "nothing (null)" if value is None else f"a {type(value).__name__}"

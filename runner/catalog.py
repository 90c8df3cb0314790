"""The model catalog: what an LLM server offers, normalized, and a short-lived disk cache of it.

Pure data and storage, no network code, so the model check and `lmflow validate` can use it
without importing httpx. The cache lets several lmflow processes share one model list for a
minute instead of each asking the server before every run.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigurationError

ModelType = Literal["llm", "vlm", "embedding"]
ModelState = Literal["loaded", "idle", "not-loaded", "unknown"]
ApiFlavour = Literal["native-v1", "native-v0", "openai"]
StructuredMode = Literal["json_schema", "json_object_schema", "json_object", "prompt"]
STRUCTURED_MODES: tuple[StructuredMode, ...] = (
    "json_schema",
    "json_object_schema",
    "json_object",
    "prompt",
)
"""How a structured answer is asked for, best first: `response_format` json_schema (LM
Studio, vLLM, Ollama), json_object with the schema beside it (llama.cpp's servers), plain
json_object, the schema in the prompt only. A server that refuses one gets the next."""

READY_STATES: frozenset[str] = frozenset({"loaded", "idle"})

DEFAULT_TTL = 60.0
CACHE_DIR_ENV = "LMFLOW_CACHE_DIR"
CACHE_TTL_ENV = "LMFLOW_MODEL_CACHE_TTL"
# Entries older than this are deleted by diskcache itself; freshness is judged at read time
# against the caller's TTL, because two processes may ask with different TTLs.
_KEEP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ModelInfo:
    """One model as the server describes it. `tool_use` is None when the server does not say."""

    id: str
    type: ModelType = "llm"
    state: ModelState = "unknown"
    max_context_length: int | None = None
    loaded_context_length: int | None = None
    tool_use: bool | None = None
    variants: tuple[str, ...] = ()
    quantization: str | None = None
    instances: tuple[str, ...] = ()
    activity: str | None = None
    """What `lms ps` says a loaded model is doing: idle, generating, processingprompt, queued."""
    parallel: int | None = None
    """Requests its loaded instances serve at once (their `config.parallel` summed), when the
    server says (LM Studio 0.4+): how many rows `lmflow batch` sends it at a time."""

    @property
    def ready(self) -> bool:
        """Loaded or idle: a request is served without loading it first."""
        return self.state in READY_STATES

    @property
    def name(self) -> str:
        """The id without its publisher: the short form LM Studio also accepts."""
        return self.id.rsplit("/", 1)[-1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state,
            "max_context_length": self.max_context_length,
            "loaded_context_length": self.loaded_context_length,
            "tool_use": self.tool_use,
            "variants": list(self.variants),
            "quantization": self.quantization,
            "instances": list(self.instances),
            "activity": self.activity,
            "parallel": self.parallel,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        return cls(
            id=data["id"],
            type=data.get("type", "llm"),
            state=data.get("state", "unknown"),
            max_context_length=data.get("max_context_length"),
            loaded_context_length=data.get("loaded_context_length"),
            tool_use=data.get("tool_use"),
            variants=tuple(data.get("variants", ())),
            quantization=data.get("quantization"),
            instances=tuple(data.get("instances", ())),
            activity=data.get("activity"),
            parallel=data.get("parallel"),
        )


@dataclass(frozen=True)
class Catalog:
    """The models one server offers, which API answered, and when it was asked."""

    server: str
    flavour: ApiFlavour
    models: tuple[ModelInfo, ...]
    fetched_at: float = field(default_factory=time.time)

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.fetched_at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "flavour": self.flavour,
            "fetched_at": self.fetched_at,
            "models": [model.as_dict() for model in self.models],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalog:
        return cls(
            server=data["server"],
            flavour=data["flavour"],
            models=tuple(ModelInfo.from_dict(m) for m in data["models"]),
            fetched_at=float(data["fetched_at"]),
        )


def cache_dir() -> Path:
    """`LMFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/lmflow`, else `~/.cache/lmflow`."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lmflow"


def model_cache_ttl(cli_value: float | None = None) -> float:
    """Seconds a cached catalog stays fresh: `--cache-ttl`, then `LMFLOW_MODEL_CACHE_TTL`, 60."""
    if cli_value is not None:
        raw: object = cli_value
        origin = "--cache-ttl"
    else:
        raw = os.environ.get(CACHE_TTL_ENV)
        origin = CACHE_TTL_ENV
        if raw is None or raw == "":
            return DEFAULT_TTL
    try:
        ttl = float(raw)  # type: ignore[arg-type]
    except ValueError:
        ttl = math.nan
    if not ttl >= 0:  # also rejects NaN
        raise ConfigurationError(
            f"{origin} must be a number of seconds >= 0, not {raw!r}",
            hint="0 turns the model cache off",
        )
    return ttl


CacheError = (OSError, sqlite3.Error)
"""What a broken cache directory raises; callers treat it as "no cache", never as fatal."""


class CatalogCache:
    """Catalogs on disk, one entry per server URL (never keyed by or holding a token).

    diskcache keeps the entries in SQLite, so several processes read and write safely. Values
    are JSON text, not pickles: readable by any lmflow version, and nothing to unpickle.
    """

    def __init__(self, directory: Path | None = None) -> None:
        import diskcache  # imported here so `lmflow --help` does not pay for it

        self.directory = (directory or cache_dir()) / "models"
        self._cache = diskcache.Cache(str(self.directory))
        self._opened_as = self._identity()

    def __enter__(self) -> CatalogCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cache.close()

    @staticmethod
    def _key(server: str) -> str:
        return "catalog:" + server

    def get(self, server: str, *, ttl: float = DEFAULT_TTL) -> Catalog | None:
        """The cached catalog for `server` if it is younger than `ttl` seconds."""
        catalog = self.peek(server)
        if catalog is None or ttl <= 0:
            return None
        age = time.time() - catalog.fetched_at
        return catalog if 0 <= age <= ttl else None

    def peek(self, server: str) -> Catalog | None:
        """The cached catalog for `server` whatever its age (for `lmflow doctor`)."""
        text = self._cache.get(self._key(server))
        if not isinstance(text, str):
            return None
        try:
            return Catalog.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError):
            return None  # written by an incompatible version: treat as absent

    def put(self, catalog: Catalog) -> None:
        self._cache.set(
            self._key(catalog.server), json.dumps(catalog.as_dict()), expire=_KEEP_SECONDS
        )

    def structured_modes(self, server: str) -> dict[str, StructuredMode]:
        """Per model id, the best structured-output form `server` was found to accept. Kept
        apart from the catalog's TTL: what a server accepts does not change by the minute."""
        text = self._cache.get("structured:" + server)
        try:
            found = json.loads(text) if isinstance(text, str) else {}
        except ValueError:
            return {}
        if not isinstance(found, dict):
            return {}
        return {k: v for k, v in found.items() if v in STRUCTURED_MODES}

    def put_structured_mode(self, server: str, model: str, mode: StructuredMode) -> None:
        modes = {**self.structured_modes(server), model: mode}
        self._cache.set("structured:" + server, json.dumps(modes), expire=_KEEP_SECONDS)

    def _identity(self) -> tuple[int, int]:
        stat = self.directory.stat()
        return stat.st_dev, stat.st_ino

    def serves(self, directory: Path) -> bool:
        """Whether this open cache is still the one in `directory` (not moved or replaced)."""
        try:
            return self.directory == directory and self._identity() == self._opened_as
        except OSError:
            return False


_shared: CatalogCache | None = None


def shared_cache() -> CatalogCache:
    """The process's open cache for `cache_dir()`. Opening one costs a few milliseconds of
    SQLite set-up, which a process that runs many workflows (serve, batch, a test session)
    would pay per run; it is opened again when the directory changes or was replaced."""
    global _shared
    if _shared is not None:
        if _shared.serves(cache_dir() / "models"):
            return _shared
        _shared.close()
        _shared = None
    _shared = CatalogCache()
    return _shared

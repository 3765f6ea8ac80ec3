"""The one Milvus connection of a store: opening, reopening, naming, and every call with its error handling.

A URI decides where the vectors live (pymilvus `MilvusClient` semantics): a path ending in ``.db`` is a
Milvus Lite file owned by this process; ``http://host:19530`` is a Milvus server. Every call passes
``timeout=`` (pymilvus otherwise retries some failures, e.g. a bad filter on Lite, for minutes) and turns
Milvus and gRPC errors into one-line `StoreError`s. Collections are created with ``consistency_level=
"Strong"``: a write is visible to the very next read.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streams.ids import validate_version
from streams.store import lite

ITEMS = "items"
USER_INTERESTS = "user_interests"
VERSIONS = "mindstream_versions"
PREFIX_PATTERN = re.compile(r"(|[A-Za-z_][A-Za-z0-9_]{0,63})")
Field = tuple[str, str, dict[str, Any]]  # (name, pymilvus DataType member, add_field options)


class StoreError(Exception):
    """The vector store cannot do what was asked; the message says what is wrong and what to do."""


def is_lite_uri(uri: str) -> bool:
    """A URI without a network scheme is a Milvus Lite file."""
    return not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def now_ms() -> int:
    return int(time.time() * 1000)


class Connection:
    """A `MilvusClient` plus what every part of the store shares: names, schemas, the sequence clock."""

    def __init__(self, uri: str, *, token: str | None, prefix: str, timeout_s: float,
                 build_timeout_s: float) -> None:
        if not PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError(f"collection prefix {prefix!r} is not valid: start with a letter or _, "
                             f"then letters, digits, _")
        self.uri = str(uri)
        self.is_lite = is_lite_uri(self.uri)
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.build_timeout_s = build_timeout_s
        self._token = token or ""  # kept for `reopen`, never logged
        if self.is_lite:
            if not self.uri.endswith(".db"):
                raise StoreError(f"Milvus Lite file {self.uri!r} must end with .db "
                                 f"(or pass a server URI http://host:19530)")
            Path(self.uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        self.client = self._open("open")
        self._schemas: dict[str, dict[str, Any]] = {}  # collection -> described schema (column inserts)
        self._last_sequence = 0
        self._sequence_lock = threading.Lock()

    def _open(self, verb: str) -> Any:
        # Imported here so that the id rules & co. stay importable without pymilvus' start-up cost.
        from pymilvus import MilvusClient

        if self.is_lite:
            lite.refuse_if_locked_elsewhere(self.uri, StoreError)
        try:
            return MilvusClient(uri=self.uri, token=self._token, timeout=self.timeout_s)
        except Exception as exc:
            raise StoreError(f"cannot {verb} the vector store at {self.uri}: {first_line(exc)}") from None

    def reopen(self) -> None:
        """Drop the connection and open a new one (a dead Lite server is replaced); StoreError if still
        down."""
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - the broken connection is being thrown away
            pass
        if self.is_lite:
            lite.release_dead_server(self.uri)
        self.client = self._open("reopen")

    def close(self) -> None:
        self.client.close()

    # --- names -----------------------------------------------------------------------------------------

    def items_name(self, version: str) -> str:
        return f"{self.prefix}{ITEMS}__{validate_version(version)}"

    def interests_name(self, version: str) -> str:
        return f"{self.prefix}{USER_INTERESTS}__{validate_version(version)}"

    @property
    def versions_name(self) -> str:
        return f"{self.prefix}{VERSIONS}"

    def is_ours(self, name: str) -> bool:
        """A collection of this store (its prefix)."""
        return (name == self.versions_name or name.startswith(f"{self.prefix}{ITEMS}__")
                or name.startswith(f"{self.prefix}{USER_INTERESTS}__"))

    # --- calls -----------------------------------------------------------------------------------------

    def call(self, what: str, method: Any, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        """Every Milvus call goes through here: bounded by timeout_s, errors become one-line StoreErrors."""
        from pymilvus.exceptions import MilvusException

        try:
            return method(*args, timeout=timeout_s or self.timeout_s, **kwargs)
        except MilvusException as exc:
            raise StoreError(f"vector store at {self.uri}: {what} failed: {first_line(exc)}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("grpc", "pymilvus")):
                raise StoreError(f"vector store at {self.uri}: {what} failed: {first_line(exc)}") from exc
            raise

    def has(self, name: str) -> bool:
        return bool(self.call("look up " + name, self.client.has_collection, name))

    def ensure_collection(self, name: str, fields: Sequence[Field], dim: int | None = None) -> None:
        """Create `name` with `fields` unless it exists; an existing one must have vectors of `dim`."""
        from pymilvus import DataType, MilvusClient

        if self.has(name):
            if dim is not None:
                self.check_dim(name, dim)
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        for field, kind, options in fields:
            schema.add_field(field, getattr(DataType, kind), **options)
        self.create(name, schema)

    def vector_index(self, index_type: str, params: Mapping[str, Any]) -> Any:
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name="vector", index_name="vector", index_type=index_type,
                               metric_type="IP", params=dict(params))
        return index_params

    def create(self, name: str, schema: Any, index_params: Any | None = None) -> None:
        """Create and load a collection (FLAT vector index unless given: searchable, exactly, at once)."""
        self._schemas.pop(name, None)
        self.call("create collection " + name, self.client.create_collection, name, schema=schema,
                  index_params=index_params or self.vector_index("FLAT", {}), consistency_level="Strong")
        self.call("load " + name, self.client.load_collection, name)

    def drop(self, name: str) -> None:
        self.call("drop " + name, self.client.drop_collection, name)
        self._schemas.pop(name, None)

    def forget_schemas(self) -> None:
        self._schemas.clear()

    def check_dim(self, name: str, dim: int) -> None:
        description = self.call("describe " + name, self.client.describe_collection, name)
        for field in description["fields"]:
            if field["name"] == "vector" and int(field["params"]["dim"]) != dim:
                raise StoreError(f"collection {name} has vectors of dimension {field['params']['dim']}, not "
                                 f"{dim}; a model with another dimension needs another model version")

    def schema(self, name: str) -> dict[str, Any]:
        """The collection's described schema, described once per collection."""
        schema = self._schemas.get(name)
        if schema is None:
            schema = self.call("describe " + name, self.client.describe_collection, name)
            self._schemas[name] = schema
        return schema

    def field_names(self, name: str) -> set[str]:
        return {field["name"] for field in self.schema(name)["fields"]}

    def insert_columns(self, what: str, name: str, columns: Mapping[str, list]) -> None:
        """Insert rows given as one list per field (every field of the schema; vectors as lists of floats;
        columns the schema lacks are left out).

        The column path packs each field in one call (`lite.column_insert`); it needs the collection's
        schema (`schema`).
        """
        schema = self.schema(name)
        entities = [{"name": field["name"], "type": field["type"], "values": columns[field["name"]]}
                    for field in schema["fields"]]
        self.call(what, lite.column_insert(self.client), name, entities, schema=schema)

    def next_sequence(self) -> int:
        """Microseconds since the epoch, strictly increasing within this process (generations, meta rows)."""
        with self._sequence_lock:  # the worker writes from a thread while HTTP recall runs in another
            self._last_sequence = max(time.time_ns() // 1000, self._last_sequence + 1)
            return self._last_sequence

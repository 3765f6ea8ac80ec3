"""One settings object for the streaming worker, read from the environment (the CLI turns flags into env).

Every setting has a documented default that works on one laptop: a local Kafka broker, a Milvus Lite file,
an in-memory table store and a web server bound to 127.0.0.1. No address or credential lives in code beyond
those localhost defaults; SASL/TLS settings are passed through to faust (aiokafka) and kafka-python as given.

The Milvus settings are `MINDSTREAM_MILVUS_*`, not `MILVUS_URI`: pymilvus reads `MILVUS_URI` itself at import
and rejects a Milvus Lite file path there ("Illegal uri"), which would break every client in the process.

- `KAFKA_BOOTSTRAP` (default `localhost:9092`): broker list `host:port[,host:port]`
- `KAFKA_SECURITY_PROTOCOL` (default `PLAINTEXT`): `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`
- `KAFKA_SASL_MECHANISM` (default `PLAIN`): `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`
- `KAFKA_SASL_USERNAME` / `_PASSWORD` (default unset): SASL credentials (only read from the environment)
- `KAFKA_SSL_CAFILE` (default unset): CA bundle for `SSL` / `SASL_SSL` (system CAs when unset)
- `MINDSTREAM_MILVUS_URI` (default `./mindstream.db`): a Milvus Lite file, or `http://host:19530` for a server
- `MINDSTREAM_MILVUS_TOKEN` (default unset): Milvus server token (`user:password` or API key)
- `MINDSTREAM_MILVUS_PREFIX` (default empty): prefix of the collection names (several stores in one Milvus)
- `MINDSTREAM_ARTIFACT` (default `./artifacts/latest`): the directory written by `mind-export`
- `MINDSTREAM_APP_ID` (default `mindstream`): faust app id = Kafka consumer group and changelog topic prefix
- `MINDSTREAM_TOPIC_INTERACTIONS` (default `interactions`): input events, keyed by user id
- `MINDSTREAM_TOPIC_PROFILES` (default `user-profiles`): compacted: user id → profile fields
- `MINDSTREAM_TOPIC_UPDATES` (default `interest-updates`): one message per recomputed user
- `MINDSTREAM_TOPIC_DLQ` (default `interactions-dlq`): every event that could not be processed
- `MINDSTREAM_PARTITIONS` (default `4`): partitions of the input topics (and so of the table changelogs)
- `MINDSTREAM_REPLICATION` (default `1`): replication factor of every topic the worker declares (inputs,
  changelogs, DLQ, updates); `3` on a production cluster
- `MINDSTREAM_MIN_INSYNC_REPLICAS` (default `1`): `min.insync.replicas` of those topics, the replicas an
  `acks=all` write needs; `2` with replication 3
- `MINDSTREAM_BATCH_SIZE` (default `256`): most events per micro-batch (one tower call per batch)
- `MINDSTREAM_BATCH_WINDOW_S` (default `0`): linger: how long a batch may wait for more events before it is
  processed, seconds; `0` = process whatever is buffered at once (batches grow by themselves under load)
- `MINDSTREAM_TABLE_STORE` (default `memory://`): `memory://` or `rocksdb://` (needs `pip install
  mindstream[rocksdb]`)
- `MINDSTREAM_WEB_HOST` (default `127.0.0.1`): address the worker's web server binds to
- `MINDSTREAM_WEB_PORT` (default `6066`): port of the worker's web server
- `MINDSTREAM_WEB_TOKEN` (default unset; only read from the environment): bearer token that `/recall` and
  `/users/{u}/interests` require (`Authorization: Bearer TOKEN`), and that workers send when they pass a
  request to each other; required when `MINDSTREAM_WEB_HOST` is not a loopback address (`/metrics` and
  `/healthz` stay open, for Prometheus and probes)
- `MINDSTREAM_WEB_URL` (default `http://WEB_HOST:WEB_PORT`): where other workers reach this one (a request for
  a user another worker owns is passed there); set it when several hosts run workers
- `MINDSTREAM_DATA_DIR` (default `./mindstream-data`): faust's local state (RocksDB tables, worker state)
- `MINDSTREAM_MAX_HISTORY` (default `0`): behaviours kept per user; `0` = the artifact's `max_history_length`
- `MINDSTREAM_MAX_SEEN` (default `512`): recent event ids kept per user to drop duplicate deliveries (the
  ids of the kept history items count too)
- `MINDSTREAM_MAX_ATTEMPTS` (default `5`): tries of a batch's tower+store step (backoff 0.5 s doubling) before
  dead-lettering
- `MINDSTREAM_MAX_FUTURE_S` (default `86400`): events stamped further than this in the future are rejected
- `MINDSTREAM_STALL_TIMEOUT_S` (default `30`): a worker whose partitions have a lag but that read nothing this
  long re-reads them from their committed offsets
- `MINDSTREAM_RECALL_DIVERSITY` (default `0`): the recall diversity λ when a request names none (`0` = by
  score under the model's merge; λ > 0 trades score for coverage of the user's interests, see
  `export/merge.py`)
- `MINDSTREAM_EVENT_LOOP` (default `uvloop`): the worker's asyncio event loop, `uvloop` or `asyncio` (the
  standard library's; for a platform without uvloop)
- `MINDSTREAM_SESSION_TIMEOUT_S` (default `10`): Kafka consumer-group session timeout: how long a crashed
  worker's partitions wait before another worker (or its restart) gets them
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
TABLE_STORES = ("memory://", "rocksdb://")
EVENT_LOOPS = {"uvloop": "uvloop", "asyncio": "aio"}  # setting -> faust's `--loop` name
# A Kafka broker refuses a session timeout outside group.min/max.session.timeout.ms (defaults 6 s and 30 min).
MIN_SESSION_TIMEOUT_S, MAX_SESSION_TIMEOUT_S = 6.0, 1800.0
MAX_LINGER_S = 10.0  # a linger beyond this is a typo (ms given as s), not a setting
# A worker whose partitions stay stalled after seeks back to the commit exits with this code (EX_TEMPFAIL),
# for its supervisor to restart it (streams/worker/watchdog.py).
EXIT_STALLED = 75
EXIT_BAD_INPUT = 2  # a UserError: bad input or setting, said in one line
HEARTBEAT_INTERVAL_S = 1.0  # a dead member is noticed within session timeout ± 1 s (Kafka: < 1/3 of it)
# How often faust commits acked offsets (its default 2.8 s): the committed lag trails the work by up to this.
COMMIT_INTERVAL_S = 1.0


class UserError(Exception):
    """A problem the user can fix (bad file, unreachable broker, bad setting): the CLI prints it as one line
    and exits with EXIT_BAD_INPUT."""


class ConfigError(UserError, ValueError):
    """A setting has a value the worker cannot use; the message names the env var and what to do."""


# field name -> (env var, default as a string)
_ENV: dict[str, tuple[str, str]] = {
    "kafka_bootstrap": ("KAFKA_BOOTSTRAP", "localhost:9092"),
    "kafka_security_protocol": ("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
    "kafka_sasl_mechanism": ("KAFKA_SASL_MECHANISM", "PLAIN"),
    "kafka_sasl_username": ("KAFKA_SASL_USERNAME", ""),
    "kafka_sasl_password": ("KAFKA_SASL_PASSWORD", ""),
    "kafka_ssl_cafile": ("KAFKA_SSL_CAFILE", ""),
    "milvus_uri": ("MINDSTREAM_MILVUS_URI", "./mindstream.db"),
    "milvus_token": ("MINDSTREAM_MILVUS_TOKEN", ""),
    "milvus_prefix": ("MINDSTREAM_MILVUS_PREFIX", ""),
    "artifact_dir": ("MINDSTREAM_ARTIFACT", "./artifacts/latest"),
    "app_id": ("MINDSTREAM_APP_ID", "mindstream"),
    "topic_interactions": ("MINDSTREAM_TOPIC_INTERACTIONS", "interactions"),
    "topic_profiles": ("MINDSTREAM_TOPIC_PROFILES", "user-profiles"),
    "topic_updates": ("MINDSTREAM_TOPIC_UPDATES", "interest-updates"),
    "topic_dlq": ("MINDSTREAM_TOPIC_DLQ", "interactions-dlq"),
    "partitions": ("MINDSTREAM_PARTITIONS", "4"),
    "replication": ("MINDSTREAM_REPLICATION", "1"),
    "min_insync_replicas": ("MINDSTREAM_MIN_INSYNC_REPLICAS", "1"),
    "batch_size": ("MINDSTREAM_BATCH_SIZE", "256"),
    "batch_window_s": ("MINDSTREAM_BATCH_WINDOW_S", "0"),
    "table_store": ("MINDSTREAM_TABLE_STORE", "memory://"),
    "web_host": ("MINDSTREAM_WEB_HOST", "127.0.0.1"),
    "web_port": ("MINDSTREAM_WEB_PORT", "6066"),
    "web_token": ("MINDSTREAM_WEB_TOKEN", ""),
    "advertised_url": ("MINDSTREAM_WEB_URL", ""),
    "data_dir": ("MINDSTREAM_DATA_DIR", "./mindstream-data"),
    "max_history": ("MINDSTREAM_MAX_HISTORY", "0"),
    "max_seen": ("MINDSTREAM_MAX_SEEN", "512"),
    "max_attempts": ("MINDSTREAM_MAX_ATTEMPTS", "5"),
    "max_future_s": ("MINDSTREAM_MAX_FUTURE_S", "86400"),
    "session_timeout_s": ("MINDSTREAM_SESSION_TIMEOUT_S", "10"),
    "stall_timeout_s": ("MINDSTREAM_STALL_TIMEOUT_S", "30"),
    "recall_diversity": ("MINDSTREAM_RECALL_DIVERSITY", "0"),
    "event_loop": ("MINDSTREAM_EVENT_LOOP", "uvloop"),
}

# Secrets are read from the environment only: never from flags (they would show in `ps`).
SECRET_FIELDS = ("kafka_sasl_password", "milvus_token", "web_token")


@dataclass(frozen=True)
class Settings:
    """Everything the worker, the producer and the recall CLI need to know. See the module docstring."""

    kafka_bootstrap: str
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_sasl_username: str
    kafka_sasl_password: str = field(repr=False)  # secrets stay out of logs and tracebacks
    kafka_ssl_cafile: str
    milvus_uri: str
    milvus_token: str = field(repr=False)
    milvus_prefix: str
    artifact_dir: str
    app_id: str
    topic_interactions: str
    topic_profiles: str
    topic_updates: str
    topic_dlq: str
    partitions: int
    replication: int
    min_insync_replicas: int
    batch_size: int
    batch_window_s: float
    table_store: str
    web_host: str
    web_port: int
    web_token: str = field(repr=False)
    advertised_url: str
    data_dir: str
    max_history: int
    max_seen: int
    max_attempts: int
    max_future_s: float
    session_timeout_s: float
    stall_timeout_s: float
    recall_diversity: float
    event_loop: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from `environ` (default `os.environ`); `overrides` (non-None) win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            env_name, default = _ENV[f.name]
            override = overrides.get(f.name)
            raw = override if override is not None else environ.get(env_name, default)
            values[f.name] = _convert(f.name, env_name, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.kafka_security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol!r}: use one of "
                              f"{', '.join(SECURITY_PROTOCOLS)}")
        if self.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism!r}: use one of "
                              f"{', '.join(SASL_MECHANISMS)}")
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(f"MINDSTREAM_EVENT_LOOP={self.event_loop!r}: use uvloop or asyncio")
        if self.table_store not in TABLE_STORES:
            raise ConfigError(f"MINDSTREAM_TABLE_STORE={self.table_store!r}: use memory:// or rocksdb://")
        for name, low in (("partitions", 1), ("replication", 1), ("min_insync_replicas", 1),
                          ("batch_size", 1), ("max_seen", 1), ("max_attempts", 1), ("max_history", 0),
                          ("web_port", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"{_ENV[name][0]}={getattr(self, name)}: must be at least {low}")
        if self.min_insync_replicas > self.replication:  # every acks=all write would fail (NotEnoughReplicas)
            raise ConfigError(f"MINDSTREAM_MIN_INSYNC_REPLICAS={self.min_insync_replicas} is above "
                              f"MINDSTREAM_REPLICATION={self.replication}: use at most the replication")
        if not MIN_SESSION_TIMEOUT_S <= self.session_timeout_s <= MAX_SESSION_TIMEOUT_S:
            raise ConfigError(f"MINDSTREAM_SESSION_TIMEOUT_S={self.session_timeout_s:g}: must be between "
                              f"{MIN_SESSION_TIMEOUT_S:g} and {MAX_SESSION_TIMEOUT_S:g} seconds "
                              f"(the broker's group.min/max.session.timeout.ms defaults)")
        if not self.stall_timeout_s >= 5:
            raise ConfigError(f"MINDSTREAM_STALL_TIMEOUT_S={self.stall_timeout_s:g}: must be at least "
                              f"5 seconds")
        if not 0 <= self.batch_window_s <= MAX_LINGER_S:
            raise ConfigError(f"MINDSTREAM_BATCH_WINDOW_S={self.batch_window_s}: must be between 0 (no "
                              f"linger, the default) and {MAX_LINGER_S:g} seconds")
        from export.merge import validate_diversity

        try:
            validate_diversity(self.recall_diversity)
        except ValueError as exc:
            raise ConfigError(f"MINDSTREAM_RECALL_DIVERSITY={self.recall_diversity:g}: {exc}") from None
        if self.advertised_url and not self.advertised_url.startswith(("http://", "https://")):
            raise ConfigError(f"MINDSTREAM_WEB_URL={self.advertised_url!r}: give http://host:port")
        if not self.kafka_bootstrap.strip():
            raise ConfigError("KAFKA_BOOTSTRAP is empty: give host:port of a Kafka broker")

    @property
    def web_is_loopback(self) -> bool:
        """Whether the web server binds a loopback address only (IPv4 or IPv6 loopback, or localhost)."""
        if self.web_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.web_host).is_loopback
        except ValueError:  # a host name or "" (every interface)
            return False

    def check_web_access(self) -> None:
        """ConfigError when the web server would answer beyond this host without a token (worker start)."""
        if not self.web_is_loopback and not self.web_token:
            raise ConfigError(f"MINDSTREAM_WEB_HOST={self.web_host!r} is reachable from other hosts: set "
                              f"MINDSTREAM_WEB_TOKEN in the environment (a bearer token every /recall and "
                              f"/users request must carry) or bind MINDSTREAM_WEB_HOST=127.0.0.1")

    def to_env(self) -> dict[str, str]:
        """The env vars that reproduce these settings in a child process (secrets included, never printed)."""
        return {_ENV[f.name][0]: str(getattr(self, f.name)) for f in fields(self)}

    @property
    def faust_loop(self) -> str:
        """faust's `--loop` for `event_loop`; ConfigError (one line) when uvloop is chosen but missing."""
        if self.event_loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                raise ConfigError("MINDSTREAM_EVENT_LOOP=uvloop but uvloop is not installed: pip install "
                                  "uvloop, or set MINDSTREAM_EVENT_LOOP=asyncio") from None
        return EVENT_LOOPS[self.event_loop]

    @property
    def topic_configs(self) -> dict[str, str]:
        """Broker configs of every topic the project declares (with `replication` replicas)."""
        return {"min.insync.replicas": str(self.min_insync_replicas)}

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]

    @property
    def web_url(self) -> str:
        """The worker's base URL: MINDSTREAM_WEB_URL, else its web host and port (127.0.0.1 for 0.0.0.0)."""
        if self.advertised_url:
            return self.advertised_url.rstrip("/")
        host = "127.0.0.1" if self.web_host in ("0.0.0.0", "") else self.web_host
        return f"http://{host}:{self.web_port}"

    def open_store(self) -> Any:
        """The vector store these settings name (streams/store/ owns every Milvus call)."""
        from streams.store import VectorStore

        return VectorStore(self.milvus_uri, token=self.milvus_token or None,
                           collection_prefix=self.milvus_prefix)

    def kafka_python_kwargs(self) -> dict[str, Any]:
        """Connection settings for kafka-python clients (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers,
                                  "security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            kwargs.update(sasl_mechanism=self.kafka_sasl_mechanism,
                          sasl_plain_username=self.kafka_sasl_username,
                          sasl_plain_password=self.kafka_sasl_password)
        if self.kafka_security_protocol.endswith("SSL") and self.kafka_ssl_cafile:
            kwargs["ssl_cafile"] = self.kafka_ssl_cafile
        return kwargs

    def faust_broker_credentials(self) -> Any:
        """faust's `broker_credentials` for SASL/TLS, or None for PLAINTEXT."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return None
        import ssl

        import faust

        ssl_context = None
        if self.kafka_security_protocol.endswith("SSL"):
            ssl_context = ssl.create_default_context(cafile=self.kafka_ssl_cafile or None)
        if self.kafka_security_protocol.startswith("SASL"):
            return faust.SASLCredentials(username=self.kafka_sasl_username, password=self.kafka_sasl_password,
                                         mechanism=self.kafka_sasl_mechanism, ssl_context=ssl_context)
        return faust.SSLCredentials(ssl_context)


def env_name(field_name: str) -> str:
    """The env var behind a settings field (for help texts and error messages)."""
    return _ENV[field_name][0]


def default_of(field_name: str) -> str:
    return _ENV[field_name][1]


def _convert(name: str, env_name: str, raw: Any) -> Any:
    kind = Settings.__dataclass_fields__[name].type
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except (TypeError, ValueError):
        expected = "whole number" if kind == "int" else "number"
        raise ConfigError(f"{env_name}={raw!r}: expected a {expected}") from None
    return str(raw)

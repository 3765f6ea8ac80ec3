"""`mind-stream`: run the real-time interest updater, feed it, and ask it for recall.

    mind-stream worker --artifact DIR           the faust worker (wraps `faust -A streams.app worker`)
    mind-stream produce FILE [--rate 100]       replay an interaction log (CSV/TSV/JSONL) into Kafka
    mind-stream recall USER [--n 50]            top-N items: from the running worker, else from the store
    mind-stream index-items ARTIFACT_DIR        load the artifact's item vectors into the vector store
    mind-stream rebuild / rollout / rollback    vectors from the Kafka log; model rollout and rollback (streams/rebuild.py)

Settings come from flags, else the environment (streams/config.py lists every env var); secrets
(KAFKA_SASL_PASSWORD, MINDSTREAM_MILVUS_TOKEN) only from the environment. Bad input ends with one line and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streams.config import ConfigError, Settings, default_of, env_name

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A problem the user can fix (bad file, unreachable broker …): printed as one line, exit 2."""


# --- flags shared by several commands -----------------------------------------------------------------

# flag -> settings field; the help text names the env var and default.
_CONNECTION_FLAGS = {"--bootstrap": "kafka_bootstrap", "--milvus-uri": "milvus_uri", "--milvus-prefix": "milvus_prefix"}
_TOPIC_FLAGS = {"--topic-interactions": "topic_interactions", "--topic-profiles": "topic_profiles",
                "--topic-updates": "topic_updates", "--topic-dlq": "topic_dlq", "--partitions": "partitions"}
_WORKER_FLAGS = {"--artifact": "artifact_dir", "--app-id": "app_id", "--batch-size": "batch_size",
                 "--batch-window": "batch_window_s", "--table-store": "table_store", "--web-host": "web_host",
                 "--web-port": "web_port", "--data-dir": "data_dir", "--max-history": "max_history",
                 "--max-seen": "max_seen", "--max-attempts": "max_attempts",
                 "--session-timeout": "session_timeout_s", "--stall-timeout": "stall_timeout_s"}
_HELP = {
    "kafka_bootstrap": "Kafka broker list host:port[,host:port]",
    "milvus_uri": "Milvus Lite file or Milvus server URI (http://host:19530)",
    "milvus_prefix": "prefix of the Milvus collection names",
    "topic_interactions": "input topic of interaction events",
    "topic_profiles": "compacted topic of user profiles",
    "topic_updates": "output topic: one message per recomputed user",
    "topic_dlq": "dead-letter topic for events that cannot be processed",
    "partitions": "partitions of the input topics when this command creates them",
    "artifact_dir": "artifact directory written by mind-export",
    "app_id": "faust app id (Kafka consumer group, changelog topic prefix)",
    "batch_size": "most events per micro-batch (one tower call per batch)",
    "batch_window_s": "longest wait for a micro-batch to fill, seconds",
    "table_store": "table store: memory:// or rocksdb://",
    "web_host": "address the worker's web server binds to",
    "web_port": "port of the worker's web server",
    "data_dir": "faust's local state directory",
    "max_history": "behaviours kept per user (0 = the artifact's max_history_length)",
    "max_seen": "recent event ids kept per user to drop duplicate deliveries",
    "max_attempts": "tries of a failing batch before its events are dead-lettered",
    "session_timeout_s": "Kafka group session timeout, seconds: how soon a crashed worker's partitions move",
    "stall_timeout_s": "seconds a lagging partition may read and commit nothing before it is re-read from its commit",
}


def _add_setting_flags(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    for flag, field in flags.items():
        parser.add_argument(flag, dest=field, default=None, metavar=field.split("_")[-1].upper(),
                            help=f"{_HELP[field]} (env {env_name(field)}, default {default_of(field) or 'unset'})")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__ and v is not None}
    return Settings.from_env(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mind-stream", description="Run the real-time interest updater and recall.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser("worker", help="run the faust worker: interactions -> tower -> Milvus, with HTTP recall",
                            description="Run the faust worker (wraps `faust -A streams.app worker`).")
    _add_setting_flags(worker, {**_CONNECTION_FLAGS, **_TOPIC_FLAGS, **_WORKER_FLAGS})
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"],
                        help="worker log level (default info)")

    produce = sub.add_parser("produce", help="replay an interaction log (CSV, TSV or JSONL) into Kafka",
                             description="Replay an interaction log into the interactions topic, keyed by user id.")
    produce.add_argument("file", type=Path, help="CSV/TSV with a header (user_id,item_id,ts[,event_id,behavior]) or JSONL")
    produce.add_argument("--format", choices=["csv", "tsv", "jsonl"], default=None,
                         help="file format (default: from the extension; .dat/.data/.tsv are tab-separated)")
    produce.add_argument("--columns", default=None,
                         help="column names for a file without a header, e.g. user_id,item_id,-,ts for MovieLens u.data")
    produce.add_argument("--rate", type=float, default=0.0, help="events per second, 0 = as fast as possible (default 0)")
    produce.add_argument("--limit", type=int, default=0, help="send at most this many events (default 0 = all)")
    produce.add_argument("--user", default=None, help="send only this user's events")
    produce.add_argument("--now", action="store_true",
                         help="stamp each event with the time it is sent (replaying an old log as live traffic)")
    produce.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_setting_flags(produce, {"--bootstrap": "kafka_bootstrap", "--topic": "topic_interactions",
                                 "--partitions": "partitions"})

    recall = sub.add_parser("recall", help="a user's top-N items (asks the running worker, else opens the store)",
                            description="Print a user's recall: from the worker's HTTP API when it is up, else "
                                        "straight from the vector store (a Milvus Lite file is one process's).")
    recall.add_argument("user", help="user id")
    recall.add_argument("--n", type=int, default=50, help="number of items (default 50)")
    recall.add_argument("--url", default=None, help="worker base URL (default http://WEB_HOST:WEB_PORT from settings)")
    recall.add_argument("--exclude-seen", action="store_true",
                        help="leave out the items already in the user's history (needs the running worker)")
    recall.add_argument("--json", action="store_true", help="print the raw JSON answer")
    _add_setting_flags(recall, {"--milvus-uri": "milvus_uri", "--milvus-prefix": "milvus_prefix", "--web-host": "web_host", "--web-port": "web_port"})

    index = sub.add_parser("index-items", help="load an artifact's item vectors into the vector store",
                           description="Load the artifact's item vectors (batched) and build the items index.")
    index.add_argument("artifact", type=Path, help="artifact directory written by mind-export")
    _add_setting_flags(index, {"--milvus-uri": "milvus_uri", "--milvus-prefix": "milvus_prefix"})
    from streams.rebuild import add_subcommands

    parser.set_defaults(rebuild_commands=add_subcommands(sub, _add_setting_flags))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"worker": cmd_worker, "produce": cmd_produce, "recall": cmd_recall, "index-items": cmd_index_items,
               **args.rebuild_commands}
    try:
        return command[args.command](args)
    except (UserError, ConfigError) as exc:
        print(f"mind-stream {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


# --- worker --------------------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from export.artifact import ArtifactError
    from export.runtime import UserTowerRuntime

    settings = _settings(args)
    try:
        UserTowerRuntime.load(settings.artifact_dir)  # fail here with one line, not inside faust
    except ArtifactError as exc:
        raise UserError(str(exc)) from None
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: not found; point --artifact at a directory written by mind-export") from None
    ensure_topics(settings)
    os.environ.update(settings.to_env())
    loglevel = {"warning": "warn"}.get(args.loglevel, args.loglevel)  # faust's own spelling
    argv = [sys.executable, "-m", "faust", "-A", "streams.app", "worker", "--loglevel", loglevel]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached


def ensure_topics(settings: Settings) -> None:
    """Create the project's topics if missing: inputs with `partitions` partitions, user-profiles compacted."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(client_id="mind-stream", request_timeout_ms=15000, **settings.kafka_python_kwargs())
    except KafkaError:
        raise UserError(f"no Kafka broker answers at {settings.kafka_bootstrap}; start one (make kafka-up) "
                        f"or set KAFKA_BOOTSTRAP / --bootstrap") from None
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(settings.topic_interactions, settings.partitions, settings.replication,
                     topic_configs=settings.topic_configs),
            NewTopic(settings.topic_profiles, settings.partitions, settings.replication,
                     topic_configs={"cleanup.policy": "compact", **settings.topic_configs}),
            NewTopic(settings.topic_updates, settings.partitions, settings.replication,
                     topic_configs=settings.topic_configs),
            NewTopic(settings.topic_dlq, 1, settings.replication, topic_configs=settings.topic_configs),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process won the race
    except KafkaError as exc:
        raise UserError(f"creating topics on {settings.kafka_bootstrap} failed: {exc}") from None
    finally:
        admin.close()
    _check_partitions(settings, [t.name for t in wanted[:2] if t.name in existing])


def _check_partitions(settings: Settings, topics: list[str]) -> None:
    """The tables' changelogs get MINDSTREAM_PARTITIONS partitions; faust refuses inputs with another count."""
    if not topics:
        return
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**settings.kafka_python_kwargs())
    try:
        for topic in topics:
            count = len(consumer.partitions_for_topic(topic) or ())
            if count and count != settings.partitions:
                raise UserError(f"topic {topic} has {count} partitions but MINDSTREAM_PARTITIONS is {settings.partitions}; "
                                f"pass --partitions {count} (the table changelogs must match the input topics)")
    finally:
        consumer.close()


# --- produce -------------------------------------------------------------------------------------------


def read_events(path: Path, fmt: str | None = None, columns: str | None = None) -> Iterator[dict[str, Any] | bytes]:
    """Rows of an interaction log as dicts (CSV/TSV) or raw lines (JSONL, sent as they are)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    fmt = fmt or {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(path.suffix.lower(), "tsv")
    if fmt == "jsonl":
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip(b"\r\n")
        return
    delimiter = "," if fmt == "csv" else "\t"
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        first = next(reader, None)
        if first is None:
            return
        if columns:
            header = [c.strip() for c in columns.split(",")]
            rows: Iterator[list[str]] = _chain([first], reader)
        elif {"user_id", "item_id", "ts"} <= {c.strip() for c in first}:
            header = [c.strip() for c in first]
            rows = reader
        else:
            raise UserError(f"{path}: first line {delimiter.join(first)[:60]!r} is not a header with user_id, "
                            f"item_id, ts; pass --columns, e.g. --columns user_id,item_id,-,ts")
        missing = {"user_id", "item_id", "ts"} - set(header)
        if missing:
            raise UserError(f"--columns {','.join(header)}: missing {', '.join(sorted(missing))}")
        for line_no, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) < len(header):
                raise UserError(f"{path}:{line_no}: {len(row)} columns, expected {len(header)} ({','.join(header)})")
            record = dict(zip(header, row, strict=False))
            yield {k: record[k] for k in ("user_id", "item_id", "ts", "event_id", "behavior") if record.get(k)}


def _chain(*iterables: Any) -> Iterator[Any]:
    for it in iterables:
        yield from it


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def to_message(record: dict[str, Any] | bytes, stamp_now: bool) -> tuple[bytes | None, bytes]:
    """(key = user id bytes, value) for one record; JSONL lines go as they are unless re-stamped."""
    if isinstance(record, bytes):
        try:
            obj = json.loads(record)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None, record  # sent anyway: the worker dead-letters it with the reason
        if not isinstance(obj, dict):
            return None, record
        key = obj.get("user_id")
        if stamp_now:
            obj["ts"] = int(time.time() * 1000)
            record = json.dumps(obj, separators=(",", ":")).encode()
        return (str(key).encode() if key is not None else None), record
    obj = dict(record)
    try:
        obj["ts"] = int(time.time() * 1000) if stamp_now else _number(obj["ts"])
    except ValueError:
        pass  # left as text: the worker dead-letters it ("wrong type for ts")
    return str(obj["user_id"]).encode(), json.dumps(obj, separators=(",", ":")).encode()


def cmd_produce(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    from tqdm import tqdm

    settings = _settings(args)
    records = list(read_events(args.file, args.format, args.columns))
    if args.user is not None:
        records = [r for r in records if _user_of(r) == args.user]
    if args.limit:
        records = records[: args.limit]
    ensure_topics(settings)
    try:
        producer = KafkaProducer(acks="all", enable_idempotence=True, linger_ms=5,
                                 **settings.kafka_python_kwargs())
    except KafkaError:
        raise UserError(f"no Kafka broker answers at {settings.kafka_bootstrap}") from None
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    started = time.monotonic()
    try:
        for i, record in enumerate(tqdm(records, unit="ev", disable=args.no_progress, desc="produce")):
            if interval:
                delay = started + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            key, value = to_message(record, args.now)
            producer.send(settings.topic_interactions, key=key, value=value)
        producer.flush(timeout=60)
    except KafkaError as exc:
        raise UserError(f"sending to {settings.topic_interactions} at {settings.kafka_bootstrap} failed: {exc}") from None
    finally:
        producer.close(timeout=10)
    print(f"sent {len(records)} events to {settings.topic_interactions} in {time.monotonic() - started:.1f}s")
    return 0


def _user_of(record: dict[str, Any] | bytes) -> str | None:
    if isinstance(record, dict):
        return str(record.get("user_id"))
    try:
        obj = json.loads(record)
        return str(obj.get("user_id")) if isinstance(obj, dict) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


# --- recall / index-items ------------------------------------------------------------------------------


def fetch_recall_http(base_url: str, user: str, n: int, timeout: float = 5.0,
                      exclude_seen: bool = False) -> dict[str, Any] | None:
    """The worker's answer, or None when no worker listens there. A 400 becomes a UserError."""
    url = f"{base_url.rstrip('/')}/recall/{urllib.parse.quote(user, safe='')}?n={n}"
    if exclude_seen:
        url += "&exclude_seen=true"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            message = json.loads(body).get("error", body)
        except json.JSONDecodeError:
            message = body.strip() or exc.reason
        raise UserError(f"{message} (HTTP {exc.code} from {base_url})") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def cmd_recall(args: argparse.Namespace) -> int:
    from streams.recall import validate_n, validate_user_id

    settings = _settings(args)
    try:
        user_id = validate_user_id(args.user)
        n = validate_n(args.n)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    answer = fetch_recall_http(args.url or settings.web_url, user_id, n, exclude_seen=args.exclude_seen)
    source = f"worker at {args.url or settings.web_url}"
    if answer is None:
        from streams.recall import recall
        from streams.store import StoreError

        if args.exclude_seen:  # the histories live in the worker's table, not in the store
            raise UserError(f"--exclude-seen needs the running worker (none answers at {args.url or settings.web_url})")
        source = f"store {settings.milvus_uri}"
        try:
            store = settings.open_store()
            try:
                answer = recall(store, user_id, n).to_dict()
            finally:
                store.close()
        except (StoreError, ValueError) as exc:
            raise UserError(f"no worker answers at {args.url or settings.web_url}, and the store: {exc}") from None
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(format_recall(answer, source))
    return 0


def format_recall(answer: dict[str, Any], source: str = "") -> str:
    """A readable table of a recall answer (rank, item, score, interest slot, title/genres when known)."""
    items = answer.get("items", [])
    head = f"recall for user {answer.get('user_id')}: {len(items)} items"
    if answer.get("cold_start"):
        head += " (cold start: no interest vectors yet, popular items)"
    if source:
        head += f" [{source}]"
    lines = [head]
    for rank, item in enumerate(items, start=1):
        extra = " ".join(str(item[k]) for k in ("title", "genres") if item.get(k))
        slot = item.get("slot")
        lines.append(f"{rank:4d}  {item.get('item_id')!s:>10}  {item.get('score', 0.0):8.4f}  "
                     f"{'slot ' + str(slot) if slot is not None else '':7}  {extra}".rstrip())
    return "\n".join(lines)


def cmd_index_items(args: argparse.Namespace) -> int:
    from export.artifact import ArtifactError
    from streams.store import StoreError, index_items

    settings = _settings(args)
    if not args.artifact.is_dir():
        raise UserError(f"{args.artifact}: not a directory; give the directory written by mind-export")
    try:
        store = settings.open_store()
        version = index_items(args.artifact, store)
        count = store.count_items(version)
    except (ArtifactError, StoreError) as exc:
        raise UserError(str(exc)) from None
    print(f"indexed {count} items of model {version} from {args.artifact} into {settings.milvus_uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

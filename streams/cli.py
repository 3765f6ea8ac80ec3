"""`mind-stream`: run the real-time interest updater, feed it, and ask it for recall.

    mind-stream worker --artifact DIR           the faust worker (wraps `faust -A streams.worker.app worker`)
    mind-stream produce FILE [--rate 100]       replay an interaction log (CSV/TSV/JSONL) into Kafka
    mind-stream recall USER [--n 50] [--diversity λ]   top-N items: from the running worker, else the store
    mind-stream index-items ARTIFACT_DIR        load the artifact's item vectors into the vector store
    mind-stream rebuild / rollout / rollback    vectors from the Kafka log; model rollout and rollback

This module is argparse and printing only: the work is in streams.produce, streams.ops, streams.kafka and
streams.store. Settings come from flags, else the environment (streams/config.py lists every env var);
secrets (KAFKA_SASL_PASSWORD, MINDSTREAM_MILVUS_TOKEN) only from the environment. Bad input (a `UserError`,
or a store that cannot do what was asked) ends with one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.config import EXIT_BAD_INPUT, Settings, UserError, default_of, env_name

__all__ = ["EXIT_BAD_INPUT", "UserError", "build_parser", "format_recall", "main"]

# --- flags shared by several commands -----------------------------------------------------------------

# flag -> settings field; the help text names the env var and default.
_CONNECTION_FLAGS = {"--bootstrap": "kafka_bootstrap", "--milvus-uri": "milvus_uri",
                     "--milvus-prefix": "milvus_prefix"}
_STORE_FLAGS = {"--milvus-uri": "milvus_uri", "--milvus-prefix": "milvus_prefix"}
_TOPIC_FLAGS = {"--topic-interactions": "topic_interactions", "--topic-profiles": "topic_profiles",
                "--topic-updates": "topic_updates", "--topic-dlq": "topic_dlq", "--partitions": "partitions"}
_WORKER_FLAGS = {"--artifact": "artifact_dir", "--app-id": "app_id", "--batch-size": "batch_size",
                 "--batch-window": "batch_window_s", "--table-store": "table_store", "--web-host": "web_host",
                 "--web-port": "web_port", "--data-dir": "data_dir", "--max-history": "max_history",
                 "--max-seen": "max_seen", "--max-attempts": "max_attempts",
                 "--session-timeout": "session_timeout_s", "--stall-timeout": "stall_timeout_s",
                 "--recall-diversity": "recall_diversity", "--event-loop": "event_loop"}
_OPS_FLAGS = {**_CONNECTION_FLAGS, "--app-id": "app_id", "--topic-interactions": "topic_interactions",
              "--topic-profiles": "topic_profiles", "--max-history": "max_history", "--max-seen": "max_seen"}
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
    "stall_timeout_s": "seconds a lagging partition may read and commit nothing before it is re-read from "
                       "its commit",
    "event_loop": "the worker's event loop: uvloop or asyncio",
    "recall_diversity": "recall diversity λ when a request names none (0 = the model's merge by score; λ > 0 "
                        "trades score for coverage of the user's interests)",
}


def _add_setting_flags(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    for flag, field in flags.items():
        parser.add_argument(flag, dest=field, default=None, metavar=field.split("_")[-1].upper(),
                            help=f"{_HELP[field]} (env {env_name(field)}, "
                                 f"default {default_of(field) or 'unset'})")


def _add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are off anyway when stderr is not a terminal)")


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars on stderr: on a terminal, unless --no-progress."""
    return not args.no_progress and sys.stderr.isatty()


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__ and v is not None}
    return Settings.from_env(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mind-stream",
                                     description="Run the real-time interest updater and recall.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser("worker",
                            help="run the faust worker: interactions -> tower -> Milvus, with HTTP recall",
                            description="Run the faust worker (wraps `faust -A streams.worker.app worker`).")
    _add_setting_flags(worker, {**_CONNECTION_FLAGS, **_TOPIC_FLAGS, **_WORKER_FLAGS})
    worker.add_argument("--log-level", "--loglevel", dest="loglevel", default="info",
                        choices=["debug", "info", "warning", "error"], help="worker log level (default info)")

    produce = sub.add_parser("produce", help="replay an interaction log (CSV, TSV or JSONL) into Kafka",
                             description="Replay an interaction log into the interactions topic, "
                                         "keyed by user id.")
    produce.add_argument("file", type=Path,
                         help="CSV/TSV with a header (user_id,item_id,ts[,event_id,behavior]) or JSONL")
    produce.add_argument("--format", choices=["csv", "tsv", "jsonl"], default=None,
                         help="file format (default: from the extension; .dat/.data/.tsv are tab-separated)")
    produce.add_argument("--columns", default=None, help="column names for a file without a header, e.g. "
                                                         "user_id,item_id,-,ts for MovieLens u.data")
    produce.add_argument("--rate", type=float, default=0.0,
                         help="events per second, 0 = as fast as possible (default 0)")
    produce.add_argument("--limit", type=int, default=0,
                         help="send at most this many events (default 0 = all)")
    produce.add_argument("--user", default=None, help="send only this user's events")
    produce.add_argument("--now", action="store_true",
                         help="stamp each event with the time it is sent "
                              "(replaying an old log as live traffic)")
    _add_progress_flag(produce)
    _add_setting_flags(produce, {"--bootstrap": "kafka_bootstrap", "--topic": "topic_interactions",
                                 "--partitions": "partitions"})

    recall = sub.add_parser("recall",
                            help="a user's top-N items (asks the running worker, else opens the store)",
                            description="Print a user's recall: from the worker's HTTP API when it is up, "
                                        "else straight from the vector store (a Milvus Lite file is one "
                                        "process's).")
    recall.add_argument("user", help="user id")
    recall.add_argument("--n", type=int, default=50, help="number of items (default 50)")
    recall.add_argument("--url", default=None,
                        help="worker base URL (default http://WEB_HOST:WEB_PORT from settings)")
    recall.add_argument("--exclude-seen", action="store_true",
                        help="leave out the items already in the user's history (needs the running worker)")
    recall.add_argument("--diversity", default=None, metavar="λ",
                        help="trade score for coverage of the user's interests: 0 = by score (the model's "
                             "merge), larger = more interests represented (default: the worker's "
                             "MINDSTREAM_RECALL_DIVERSITY)")
    recall.add_argument("--json", action="store_true", help="print the raw JSON answer")
    _add_setting_flags(recall, {**_STORE_FLAGS, "--web-host": "web_host", "--web-port": "web_port"})

    index = sub.add_parser("index-items", help="load an artifact's item vectors into the vector store",
                           description="Load the artifact's item vectors (batched) and build the items "
                                       "index.")
    index.add_argument("artifact", type=Path, help="artifact directory written by mind-export")
    _add_progress_flag(index)
    _add_setting_flags(index, _STORE_FLAGS)
    _add_ops_parsers(sub)
    return parser


def _add_ops_parsers(sub: Any) -> None:
    rebuild = sub.add_parser("rebuild",
                             help="recreate every user's vectors from the Kafka log into an empty store",
                             description="Read the interactions topic from the beginning, apply the worker's "
                                         "history rule and write every user's vectors (stop the worker first "
                                         "when the store is a Milvus Lite file).")
    rebuild.add_argument("--artifact", type=Path, required=True,
                         help="artifact directory written by mind-export")
    rebuild.add_argument("--source", choices=["log", "changelog"], default="log",
                         help="the interactions log (default) or the worker's table changelog")
    rebuild.add_argument("--drop", action="store_true", help="drop every collection of the store first")
    _add_progress_flag(rebuild)
    _add_setting_flags(rebuild, _OPS_FLAGS)

    rollout = sub.add_parser("rollout", help="write a new model version's vectors, then switch readers to it",
                             description="Index the new artifact's items, replay the histories table into "
                                         "its own collections, then activate it (one pointer row).")
    rollout.add_argument("--artifact", type=Path, required=True, help="the NEW artifact directory")
    rollout.add_argument("--source", choices=["log", "changelog"], default="changelog",
                         help="the worker's table changelog (default) or the interactions log")
    _add_progress_flag(rollout)
    _add_setting_flags(rollout, _OPS_FLAGS)

    rollback = sub.add_parser("rollback",
                              help="switch readers back to the model version the current one replaced")
    rollback.add_argument("--artifact", type=Path, default=None,
                          help="the previous version's artifact: refresh its vectors from the table first")
    rollback.add_argument("--source", choices=["log", "changelog"], default="changelog",
                          help="where the refresh reads histories (default changelog)")
    _add_setting_flags(rollback, _OPS_FLAGS)


def main(argv: list[str] | None = None) -> int:
    from streams.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UserError, StoreError) as exc:
        print(f"mind-stream {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


# --- worker and produce ------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.kafka import ensure_topics
    from streams.ops import load_runtime

    settings = _settings(args)
    settings.check_web_access()
    faust_loop = settings.faust_loop  # uvloop missing: one line here, not a traceback inside faust
    load_runtime(settings.artifact_dir)  # fail here with one line, not inside faust
    ensure_topics(settings)
    os.environ.update(settings.to_env())
    loglevel = {"warning": "warn"}.get(args.loglevel, args.loglevel)  # faust's own spelling
    argv = [sys.executable, "-m", "faust", "-A", "streams.worker.app", "--loop", faust_loop,
            "worker", "--loglevel", loglevel]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_produce(args: argparse.Namespace) -> int:
    from streams.produce import read_events, send, user_of

    settings = _settings(args)
    records = list(read_events(args.file, args.format, args.columns))
    if args.user is not None:
        records = [r for r in records if user_of(r) == args.user]
    if args.limit:
        records = records[: args.limit]
    seconds = send(settings, records, rate=args.rate, stamp_now=args.now, progress=_progress(args))
    print(f"sent {len(records)} events to {settings.topic_interactions} in {seconds:.1f}s")
    return 0


# --- recall / index-items ------------------------------------------------------------------------------


def fetch_recall_http(base_url: str, user: str, n: int, timeout: float = 5.0,
                      exclude_seen: bool = False, diversity: float | None = None,
                      token: str = "") -> dict[str, Any] | None:
    """The worker's answer, or None when no worker listens there. A 400 or 401 becomes a UserError.

    `diversity` None leaves the choice to the worker (its MINDSTREAM_RECALL_DIVERSITY)."""
    url = f"{base_url.rstrip('/')}/recall/{urllib.parse.quote(user, safe='')}?n={n}"
    if exclude_seen:
        url += "&exclude_seen=true"
    if diversity is not None:
        url += f"&diversity={diversity!r}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
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
    from streams.recall import validate_diversity, validate_n, validate_user_id

    try:
        user_id = validate_user_id(args.user)
        n = validate_n(args.n)
        diversity = None if args.diversity is None else validate_diversity(args.diversity)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    settings = _settings(args)
    url = args.url or settings.web_url
    answer = fetch_recall_http(url, user_id, n, exclude_seen=args.exclude_seen, diversity=diversity,
                               token=settings.web_token)
    source = f"worker at {url}"
    if answer is None:
        from streams.recall import recall
        from streams.store import StoreError

        if args.exclude_seen:  # the histories live in the worker's table, not in the store
            raise UserError(f"--exclude-seen needs the running worker (none answers at {url})")
        source = f"store {settings.milvus_uri}"
        try:
            store = settings.open_store()
            try:
                answer = recall(store, user_id, n, diversity=(settings.recall_diversity if diversity is None
                                                              else diversity)).to_dict()
            finally:
                store.close()
        except (StoreError, ValueError) as exc:
            raise UserError(f"no worker answers at {url}, and the store: {exc}") from None
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
    elif answer.get("diversity"):
        head += f" (diversity {answer['diversity']:g})"
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
    from streams.store import index_items

    settings = _settings(args)
    if not args.artifact.is_dir():
        raise UserError(f"{args.artifact}: not a directory; give the directory written by mind-export")
    try:
        store = settings.open_store()
        version = index_items(args.artifact, store, progress=_progress(args))
        count = store.count_items(version)
    except ArtifactError as exc:
        raise UserError(str(exc)) from None
    print(f"indexed {count} items of model {version} from {args.artifact} into {settings.milvus_uri}")
    return 0


# --- rebuild / rollout / rollback (streams/ops.py) ----------------------------------------------------


Command = Callable[[argparse.Namespace], int]


def _ops_command(step: Callable[[Settings, Any, argparse.Namespace], str]) -> Command:
    """Open the store the flags name, run `step(settings, store, args)`, print its line, close the store."""
    from streams.store import StoreError

    def run(args: argparse.Namespace) -> int:
        settings = _settings(args)
        artifact = getattr(args, "artifact", None)
        if artifact is not None and not artifact.is_dir():
            raise UserError(f"{artifact}: not a directory; give an artifact directory written by mind-export")
        try:
            store = settings.open_store()
        except ValueError as exc:  # a setting the store refuses (e.g. the collection prefix)
            raise UserError(str(exc)) from None
        except StoreError as exc:
            raise UserError(f"{exc} (a Milvus Lite file is one process's: stop the worker first)") from None
        try:
            print(step(settings, store, args))
        finally:
            store.close()
        return 0

    return run


def _rebuild(settings: Settings, store: Any, args: argparse.Namespace) -> str:
    from streams.ops import rebuild

    stats = rebuild(settings, args.artifact, store=store, source=args.source, drop=args.drop,
                    progress=_progress(args))
    source = settings.topic_interactions if args.source == "log" else "the changelog"
    return (f"rebuilt {stats.users_written} users ({stats.rows_written} vectors, {stats.tower_calls} tower "
            f"calls) from {stats.messages} messages of {source}: {stats.applied} applied, {stats.duplicates} "
            f"duplicates, {stats.rejected} rejected, in {stats.seconds:.1f}s")


def _rollout(settings: Settings, store: Any, args: argparse.Namespace) -> str:
    from streams.ops import rollout

    previous, version, stats = rollout(settings, args.artifact, store=store, source=args.source,
                                       progress=_progress(args))
    caught_up = f"{stats.users_caught_up} users caught up in {stats.catch_up_passes} passes"
    if not stats.caught_up:
        caught_up = (f"the workers still had events to apply after {stats.catch_up_passes} catch-up passes "
                     f"(those land in {previous} only)")
    return (f"rolled out model {version} (was {previous or 'none'}): {stats.users_written} users, "
            f"{stats.rows_written} vectors, {caught_up}, in {stats.seconds:.1f}s; restart the workers with "
            f"--artifact {args.artifact} now")


def _rollback(settings: Settings, store: Any, args: argparse.Namespace) -> str:
    from streams.ops import rollback

    current, previous = rollback(settings, store=store, artifact_dir=args.artifact, source=args.source)
    return f"rolled back from model {current} to {previous}; restart the worker with that version's artifact"


COMMANDS: dict[str, Command] = {
    "worker": cmd_worker, "produce": cmd_produce, "recall": cmd_recall, "index-items": cmd_index_items,
    "rebuild": _ops_command(_rebuild), "rollout": _ops_command(_rollout), "rollback": _ops_command(_rollback),
}

if __name__ == "__main__":
    raise SystemExit(main())

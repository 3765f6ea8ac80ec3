"""`mind-stream produce`: an interaction log (CSV, TSV or JSONL) as `interactions` messages, keyed by user id.

CSV/TSV rows become the JSON objects of streams/events.py; JSONL lines are sent as they are (re-stamped with
`stamp_now`). A record the worker would reject is still sent: the worker dead-letters it with the reason.
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from streams.config import Settings, UserError
from streams.kafka import ensure_topics, producer

EVENT_FIELDS = ("user_id", "item_id", "ts", "event_id", "behavior")


def read_events(path: Path, fmt: str | None = None,
                columns: str | None = None) -> Iterator[dict[str, Any] | bytes]:
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
            rows: Iterator[list[str]] = itertools.chain([first], reader)
        elif {"user_id", "item_id", "ts"} <= {c.strip() for c in first}:
            header = [c.strip() for c in first]
            rows = reader
        else:
            raise UserError(f"{path}: first line {delimiter.join(first)[:60]!r} is not a header with "
                            f"user_id, item_id, ts; pass --columns, e.g. --columns user_id,item_id,-,ts")
        missing = {"user_id", "item_id", "ts"} - set(header)
        if missing:
            raise UserError(f"--columns {','.join(header)}: missing {', '.join(sorted(missing))}")
        for line_no, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) < len(header):
                raise UserError(f"{path}:{line_no}: {len(row)} columns, expected {len(header)} "
                                f"({','.join(header)})")
            record = dict(zip(header, row, strict=False))
            yield {k: record[k] for k in EVENT_FIELDS if record.get(k)}



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


def user_of(record: dict[str, Any] | bytes) -> str | None:
    if isinstance(record, dict):
        return str(record.get("user_id"))
    try:
        obj = json.loads(record)
        return str(obj.get("user_id")) if isinstance(obj, dict) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def send(settings: Settings, records: Sequence[dict[str, Any] | bytes], *, rate: float = 0.0,
         stamp_now: bool = False, progress: bool = True) -> float:
    """Send `records` to the interactions topic (creating the topics if missing) at `rate` events per second
    (0 = as fast as possible); returns the seconds it took. UserError when Kafka refuses."""
    from kafka.errors import KafkaError
    from tqdm import tqdm

    ensure_topics(settings)
    sender = producer(settings)
    interval = 1.0 / rate if rate > 0 else 0.0
    started = time.monotonic()
    try:
        for i, record in enumerate(tqdm(records, unit="ev", disable=not progress, desc="produce")):
            if interval:
                delay = started + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            key, value = to_message(record, stamp_now)
            sender.send(settings.topic_interactions, key=key, value=value)
        sender.flush(timeout=60)
    except KafkaError as exc:
        raise UserError(f"sending to {settings.topic_interactions} at {settings.kafka_bootstrap} failed: "
                        f"{exc}") from None
    finally:
        sender.close(timeout=10)
    return time.monotonic() - started

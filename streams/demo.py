"""`make demo`: the whole mission end to end, printed for a person to watch.

Kafka → ml-100k → a short MIND training → ONNX artifact → items in Milvus Lite → `mind-stream worker` →
one user's behaviours streamed through Kafka → their interests (each with its own top items) and the merged
recall, each item labelled with the interest it came from → a burst of events in a genre they never
touched → the same again, a moment later: a new interest for that genre, next to the old ones.

Every step runs the project's own CLIs as subprocesses (`mind-model`, `mind-export`, `mind-stream`), so
streams/ never imports model/ or torch. Everything is written under ./demo-out/ (gitignored); what the demo
starts (broker, worker) it stops, also on Ctrl-C. Uses KAFKA_BOOTSTRAP when set, else starts a broker with
deploy/kafka/kafka.sh. `python -m streams.demo --help` lists the knobs (epochs, user, genre, burst size).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

from streams.demo_report import (
    Catalogue,
    shares_text,
    show_interests,
    show_new_interest,
    show_recall,
    step,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DIVERSITY_SWEEP = (0.0, 1.0, 5.0, 20.0)  # λ > 0 trades score for coverage of the user's interests
CANDIDATE_GENRES = ("Horror", "Western", "Children's", "Musical", "Documentary", "Film-Noir", "Sci-Fi", "War")
BURST_SHARE = 0.4  # of the history window: the burst opens a new interest while the older ones keep the rest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streams.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo-out",
                        help="working folder (default ./demo-out)")
    parser.add_argument("--epochs", type=int, default=5,
                        help="training epochs, kept short for a demo (default 5)")
    parser.add_argument("--retrain", action="store_true",
                        help="train and export again even if demo-out has an artifact")
    parser.add_argument("--user", default=None,
                        help="the user to follow (default: the most active held-out user with 40-120 ratings "
                             "who never rated --genre)")
    parser.add_argument("--genre", default=None,
                        help=f"the genre of the burst (default: first of {', '.join(CANDIDATE_GENRES)} "
                             "the user never touched)")
    parser.add_argument("--burst", type=int, default=None,
                        help="events in the burst (default: 40%% of the model's history window, so the older "
                             "history keeps most of the window)")
    parser.add_argument("--n", type=int, default=15, help="recall list length printed (default 15)")
    parser.add_argument("--diversity", type=float, default=None, metavar="λ",
                        help="the worker's recall diversity (MINDSTREAM_RECALL_DIVERSITY; default: the "
                             "worker's own default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen] = []
    kafka_dir: Path | None = None
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        if not bootstrap:
            kafka_dir = out / "kafka"
            step("Kafka: starting a local broker (deploy/kafka/kafka.sh)")
            started_broker = run(["bash", str(REPO_ROOT / "deploy/kafka/kafka.sh"), "start", "--port", "auto",
                                  "--dir", str(kafka_dir), "--exit-with", str(os.getpid())], capture=True)
            bootstrap = started_broker.strip().splitlines()[-1]
        print(f"  broker at {bootstrap}")

        step("Data: ml-100k (mind-model data)")
        run([str(BIN / "mind-model"), "data", "ml-100k"])
        log = read_log(REPO_ROOT / "data" / "raw" / "ml-100k" / "ml-100k.inter")

        artifact = out / "artifact"
        run_dir = out / "run"
        if args.retrain or not (artifact / "manifest.json").is_file():
            step(f"Training MIND for {args.epochs} epochs (mind-model train) and exporting it "
                 "(mind-export)")
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(artifact, ignore_errors=True)
            run([str(BIN / "mind-model"), "train", "--data", "ml-100k", "--out", str(run_dir), "--epochs",
                 str(args.epochs), "--embedding-dim", "32", "--num-interests", "4", "--no-progress"])
            run([str(BIN / "mind-export"), str(run_dir), "--out", str(artifact)])
        else:
            step(f"Using the artifact already in {artifact} (--retrain to train again)")
        manifest = json.loads((artifact / "manifest.json").read_text())
        from export.runtime import UserTowerRuntime

        # Only to name items (titles, genres) and what each interest vector points at.
        catalogue = Catalogue.of(UserTowerRuntime.load(artifact))
        genres_of = catalogue.genres
        if not catalogue.has_titles:
            print("  (this artifact has no item titles: items show as ids; --retrain to export them)")
        print(f"  model {manifest['model_version']}: K={manifest['num_interests']}, "
              f"d={manifest['embedding_dim']}, max history {manifest['max_history_length']}")

        tag = uuid.uuid4().hex[:6]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MINDSTREAM_")}
        env.update({
            "KAFKA_BOOTSTRAP": bootstrap, "MINDSTREAM_APP_ID": f"mindstream-demo-{tag}",
            "MINDSTREAM_TOPIC_INTERACTIONS": f"demo-{tag}-interactions",
            "MINDSTREAM_TOPIC_PROFILES": f"demo-{tag}-profiles",
            "MINDSTREAM_TOPIC_UPDATES": f"demo-{tag}-interest-updates",
            "MINDSTREAM_TOPIC_DLQ": f"demo-{tag}-dlq",
            "MINDSTREAM_MILVUS_URI": str(out / f"mindstream-{tag}.db"),
            "MINDSTREAM_DATA_DIR": str(out / f"faust-{tag}"),
            "MINDSTREAM_WEB_PORT": str(free_port()), "MINDSTREAM_ARTIFACT": str(artifact),
        })  # fmt: skip
        if args.diversity is not None:
            env["MINDSTREAM_RECALL_DIVERSITY"] = str(args.diversity)
        step("Milvus Lite: indexing the item vectors (mind-stream index-items)")
        run([str(BIN / "mind-stream"), "index-items", str(artifact), "--no-progress"], env=env)

        step("Starting the worker (mind-stream worker)")
        worker_log = out / f"worker-{tag}.log"
        with worker_log.open("wb") as log_file:  # the worker writes to its own copy of the descriptor
            worker = subprocess.Popen([str(BIN / "mind-stream"), "worker", "--artifact", str(artifact),
                                       "--log-level", "warning"], env=env, stdout=log_file,
                                      stderr=subprocess.STDOUT)
        started.append(worker)
        url = f"http://127.0.0.1:{env['MINDSTREAM_WEB_PORT']}"
        wait_for(lambda: http_json(f"{url}/healthz", quiet=True), 90,
                 f"the worker at {url} (log {worker_log})", worker)
        print(f"  worker up at {url} (log {worker_log})")

        held_out = held_out_users(run_dir)
        user, genre = pick_user_and_genre(log, genres_of, args.user, args.genre, held_out)
        history = log[user]
        touched = Counter(g for item, _ in history for g in genres_of.get(item, []))
        step(f"User {user}: {len(history)} ratings, never a {genre} movie"
             + (" (a held-out test user: the model never trained on them)" if user in held_out else ""))
        print("  genres rated: " + ", ".join(f"{g} {c}" for g, c in touched.most_common(8)))

        step(f"Streaming user {user}'s {len(history)} behaviours through Kafka (mind-stream produce)")
        now = time.time()
        events_file = out / f"user-{user}-{tag}.jsonl"
        # original order
        stamps = [round(now - 60 + j * 30 / len(history), 3) for j in range(len(history))]
        with events_file.open("w") as fh:
            for (item, _), ts in zip(history, stamps, strict=True):
                fh.write(json.dumps({"user_id": user, "item_id": item, "ts": ts, "behavior": "rating"})
                         + "\n")
        run([str(BIN / "mind-stream"), "produce", str(events_file), "--rate", "500", "--no-progress"],
            env=env)
        kept = min(len(history), manifest["max_history_length"])
        before = wait_for(lambda: reflects(url, user, kept, int(round(stamps[-1] * 1000))), 60,
                          f"user {user}'s vectors", worker)
        recall_before = http_json(f"{url}/recall/{user}?n={args.n}")
        wide_before = http_json(f"{url}/recall/{user}?n=50")
        show_interests("BEFORE the burst", before, wide_before, catalogue, genre)
        show_recall("BEFORE the burst", recall_before, catalogue, genre)
        show_diversity(url, user)

        popular = Counter(item for h in log.values() for item, _ in h if genre in genres_of.get(item, []))
        burst_size = args.burst or max(1, round(BURST_SHARE * manifest["max_history_length"]))
        burst = [item for item, _ in popular.most_common(burst_size)]
        step(f"A burst of {len(burst)} {genre} events for user {user}, live")
        for item in burst:
            print(f"  + {catalogue.title(item)}  [{' '.join(genres_of.get(item, []))}]")
        # Sent from here (kafka-python), stamped at send time, so the timing below is the stream's alone.
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=0)
        sent_at = time.time()
        for j, item in enumerate(burst):
            producer.send(env["MINDSTREAM_TOPIC_INTERACTIONS"], key=user.encode(),
                          value=json.dumps({"user_id": user, "item_id": item, "ts": int(sent_at * 1000) + j,
                                            "behavior": "rating"}).encode())
        producer.flush()
        producer.close()
        latest_ms = int(sent_at * 1000) + len(burst) - 1
        kept_after = min(kept + len(burst), manifest["max_history_length"])
        after = wait_for(lambda: reflects(url, user, kept_after, latest_ms), 60,
                         f"user {user}'s vectors after the burst", worker)
        visible_after = time.time() - sent_at
        recall_after = http_json(f"{url}/recall/{user}?n={args.n}")
        wide_after = http_json(f"{url}/recall/{user}?n=50")
        show_interests("AFTER the burst", after, wide_after, catalogue, genre)
        show_recall("AFTER the burst", recall_after, catalogue, genre)
        show_diversity(url, user)

        count = lambda answer: sum(genre in genres_of.get(i["item_id"], []) for i in answer["items"])  # noqa: E731
        ids = lambda answer: {i["item_id"] for i in answer["items"]}  # noqa: E731
        step("What changed")
        print(f"  {genre} movies in the top {args.n}: {count(recall_before)} -> {count(recall_after)}; "
              f"in the top 50: {count(wide_before)} -> {count(wide_after)}")
        kept_items = len(ids(recall_before) & ids(recall_after))
        print(f"  top {args.n} items still there after the burst: {kept_items} of {args.n}")
        print(f"  interests K'u: {len(before['interests'])} -> {len(after['interests'])}")
        show_new_interest(before, wide_before, after, wide_after, catalogue, genre)
        unseen = http_json(f"{url}/recall/{user}?n={args.n}&exclude_seen=true")
        fresh = [catalogue.title(i["item_id"]) for i in unseen["items"]
                 if genre in genres_of.get(i["item_id"], [])]
        print(f"  with exclude_seen=true (nothing already in the history): {len(fresh)} {genre} movies in "
              f"the top {args.n}, e.g. {', '.join(t[:30] for t in fresh[:4]) or '-'}")
        written_ms = max(row["updated_at_ms"] for row in after["interests"]) - latest_ms
        print(f"  last burst event -> its vectors written in Milvus: {written_ms} ms; "
              f"burst sent -> new recall seen over HTTP: {visible_after:.2f} s "
              "(includes the demo's 0.1 s polling)")
        print_metrics(url)
        return 0
    except DemoError as exc:
        print(f"\nmake demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping what the demo started", file=sys.stderr)
        return 130
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if kafka_dir is not None:
            subprocess.run(["bash", str(REPO_ROOT / "deploy/kafka/kafka.sh"), "stop", "--dir",
                            str(kafka_dir)], capture_output=True, check=False)


class DemoError(Exception):
    """A step failed; the message says which and where to look."""


def run(cmd: list[str], *, env: dict[str, str] | None = None, capture: bool = False) -> str:
    result = subprocess.run(cmd, env=env, cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
        raise DemoError(f"{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))} failed "
                        f"(exit {result.returncode}){': ' + detail[0] if detail else ''}")
    return result.stdout or ""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, quiet: bool = False) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        if quiet:
            return None
        raise


def wait_for(predicate, timeout: float, what: str, worker: subprocess.Popen):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise DemoError(f"the worker exited ({worker.returncode}) while waiting for {what}; see its log "
                            "in demo-out/")
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise DemoError(f"timed out after {timeout:g}s waiting for {what}")


def reflects(url: str, user: str, history_length: int, latest_ms: int | None = None) -> dict | None:
    answer = http_json(f"{url}/users/{user}/interests", quiet=True)
    if not answer or answer["history_length"] != history_length or not answer["interests"]:
        return None
    if latest_ms is not None and any(row["event_ts_ms"] != latest_ms for row in answer["interests"]):
        return None
    return answer


def read_log(path: Path) -> dict[str, list[tuple[str, float]]]:
    """user id -> [(item id, ts)] in time order."""
    log: dict[str, list[tuple[str, float]]] = {}
    with path.open(encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = [h.split(":")[0] for h in next(reader)]
        u, i, t = header.index("user_id"), header.index("item_id"), header.index("timestamp")
        for row in reader:
            log.setdefault(row[u], []).append((row[i], float(row[t])))
    for history in log.values():
        history.sort(key=lambda pair: pair[1])
    return log


def held_out_users(run_dir: Path) -> set[str]:
    """Raw ids of the run's held-out test users (`mind-model train` writes them); empty if the run has
    none."""
    path = run_dir / "held_out_users.json"
    try:
        return set(json.loads(path.read_text())["test"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return set()


def pick_user_and_genre(log, genres_of, user, genre, held_out: set[str]) -> tuple[str, str]:  # noqa: ANN001
    """The given user, else the held-out (else any) user with the most ratings in 40-120 (the history fits
    the tower's window) who never rated a movie of the given genre, else of the first candidate genre."""
    if user is not None and user not in log:
        raise DemoError(f"--user {user}: no such user in ml-100k")
    candidates = [user] if user else sorted((u for u in log if 40 <= len(log[u]) <= 120),
                                            key=lambda u: (u not in held_out, -len(log[u]), u))
    for g in ([genre] if genre else CANDIDATE_GENRES):
        for u in candidates:
            if not any(g in genres_of.get(item, []) for item, _ in log[u]):
                return u, g
    raise DemoError("no user/genre pair where the user never touched the genre; pass --user and --genre")


def show_diversity(url: str, user: str) -> None:
    """The interests' shares of the top 50 at a few recall diversities (?diversity=λ)."""
    print("  the same user with the diversity knob (GET /recall/USER?diversity=λ), interests' shares of the "
          "top 50:")
    for diversity in DIVERSITY_SWEEP:
        answer = http_json(f"{url}/recall/{user}?n=50&diversity={diversity:g}")
        print(f"    λ = {diversity:g}: {shares_text(answer)}")


def print_metrics(url: str) -> None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)

    def mean(metric: str) -> str:
        count = values.get(f"{metric}_count", 0)
        return f"{values.get(f'{metric}_sum', 0) / count * 1000:.1f} ms" if count else "n/a"

    print(f"  worker metrics: {values.get('mindstream_events_in_total', 0):.0f} events in, "
          f"{values.get('mindstream_batch_events_count', 0):.0f} micro-batches, "
          f"mean tower call {mean('mindstream_tower_seconds')}, "
          f"mean upsert {mean('mindstream_upsert_seconds')}, "
          f"mean freshness {mean('mindstream_freshness_seconds')} "
          f"(the replayed history was stamped 30-60 s in the past)")


if __name__ == "__main__":
    raise SystemExit(main())

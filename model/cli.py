"""`mind-model`: prepare data, train and evaluate MIND and its baselines, explain a user's interests.

    mind-model data ml-100k
    mind-model data --interactions log.csv [--items items.csv] [--users users.csv] --name shop
    mind-model train --data ml-100k --out runs/mind-100k [--model mind|mind1|youtube_dnn] [config flags]
    mind-model evaluate runs/mind-100k
    mind-model compare --data ml-1m --out runs/compare-ml-1m
    mind-model explain runs/mind-100k 42 --out heatmap.png

Bad flags or files end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from model.baselines import MODEL_CHOICES, resolve_model_choice
from model.checkpoint import CheckpointError, load_checkpoint
from model.config import ConfigError, MindConfig
from model.data import MULTI_VALUE_SEPARATOR, DataError, InteractionData, load_dataset, user_split
from model.datasets import DATASET_NAMES, check_own_name, prepare_dataset, save_own_dataset
from model.evaluate import diagnose_interests, evaluate_scorer, format_diagnostics, format_table, model_scorer
from model.logfiles import TIME_FORMATS, LogColumns, SideColumns, load_interactions
from model.summary import summarize

COMPARE_MODELS = ("mind", "mind1", "youtube_dnn", "popular")


class UsageError(Exception):
    """A bad command line or input file: reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise UsageError(f"{self.prog}: error: {message} (see --help)")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and training hyperparameters (defaults: the "
                                      "paper's where it gives one)")
    for f in dataclasses.fields(MindConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: %(default)s)"
        if f.type in (bool, "bool"):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), type(f.default))
            choices = ("uniform", "popularity") if f.name == "negative_sampler" else None
            group.add_argument(flag, dest=f.name, type=kind, default=f.default, choices=choices,
                               metavar=f.name.upper(), help=help_text)


def _config_from(args: argparse.Namespace) -> MindConfig:
    return MindConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(MindConfig)})


def _add_data_flags(parser: argparse.ArgumentParser, split: bool = True) -> None:
    parser.add_argument("--data", required=True, metavar="DATASET",
                        help=f"a named dataset ({', '.join(DATASET_NAMES)}), the NAME of your own data "
                             "prepared with `mind-model data --interactions FILE --name NAME`, or a prepared "
                             ".npz cache file")
    parser.add_argument("--cache-dir", type=Path, default=Path("data"),
                        help="where named datasets are downloaded and cached (default: %(default)s)")
    if split:
        parser.add_argument("--valid-fraction", type=float, default=0.1,
                            help="share of users held out for validation / early "
                                 "stopping (default: %(default)s)")
        parser.add_argument("--test-fraction", type=float, default=0.1,
                            help="share of users held out for the test (never used in "
                                 "training; default: %(default)s)")
        parser.add_argument("--split-seed", type=int, default=0,
                            help="seed of the random user split (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default: %(default)s: on this shared 2-core "
                             "machine two threads ran up to 50x slower than one, spinning while the "
                             "other was descheduled)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mind-model",
                     description="Train and evaluate MIND (multi-interest recall) and baselines.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    data = commands.add_parser("data", help="prepare and summarise a named dataset or your own log",
                               description="Download (if needed), prepare and cache a named dataset, or "
                                           "prepare your own interaction log (CSV, TSV or Parquet) under a "
                                           "name that train, compare, evaluate and mind-export then take; "
                                           "print a summary.")
    data.add_argument("dataset", nargs="?", choices=DATASET_NAMES, metavar="DATASET",
                      help=f"a named dataset to prepare ({', '.join(DATASET_NAMES)}); or use --interactions")
    data.add_argument("--cache-dir", type=Path, default=Path("data"),
                      help="where datasets are downloaded and cached (default: %(default)s)")
    data.add_argument("--refresh", action="store_true",
                      help="parse the raw files again instead of using the cache")
    _add_own_data_flags(data)

    train = commands.add_parser("train",
                                help="train one model and write RUN_DIR/checkpoint.pt + metrics.json",
                                description="Train MIND or a baseline on the training users; keep the epoch "
                                            "with the best validation Recall@50.")
    _add_data_flags(train)
    train.add_argument("--out", type=Path, required=True, metavar="RUN_DIR",
                       help="run directory for checkpoint.pt and metrics.json")
    train.add_argument("--model", choices=MODEL_CHOICES, default="mind",
                       help="mind; mind1 = MIND with one interest; "
                            "youtube_dnn = mean-pooled behaviours + MLP "
                            "(default: %(default)s)")
    _add_config_flags(train)

    evaluate = commands.add_parser("evaluate", help="evaluate a run on its held-out test users",
                                   description="Score a trained run on the test users of its split "
                                               "(next-item and user-split protocols, N in {20, 50}); write "
                                               "RUN_DIR/evaluation.json and print a table.")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a directory written by `train`")
    evaluate.add_argument("--cache-dir", type=Path, default=Path("data"),
                          help="where the run's dataset is cached (default: %(default)s)")
    evaluate.add_argument("--threads", type=int, default=1,
                          help="torch intra-op threads (default: %(default)s)")

    compare = commands.add_parser("compare",
                                  help="MIND vs MIND-1 vs YouTube-DNN vs most-popular on one split",
                                  description="Train each model on the same user split, evaluate all on the "
                                              "same test users, print one table and write OUT/compare.json.")
    _add_data_flags(compare)
    compare.add_argument("--out", type=Path, default=None, metavar="OUT_DIR",
                         help="where runs and compare.json go (default: runs/compare-DATASET)")
    compare.add_argument("--models", default=",".join(COMPARE_MODELS),
                         help=f"comma-separated subset of {', '.join(COMPARE_MODELS)} (default: all)")
    _add_config_flags(compare)

    explain = commands.add_parser("explain", help="heatmap of one user's coupling coefficients",
                                  description="Write a PNG heatmap of which behaviours formed which interest "
                                              "(behaviours labelled with their genres) for one user, next to "
                                              "each interest's own top items and the merged top list; print "
                                              "them too.")
    explain.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a directory written by `train`")
    explain.add_argument("user", metavar="USER", help="raw user id from the run's dataset (e.g. 42)")
    explain.add_argument("--out", type=Path, default=Path("heatmap.png"),
                         help="PNG to write (default: %(default)s)")
    explain.add_argument("--cache-dir", type=Path, default=Path("data"),
                         help="where the run's dataset is cached (default: %(default)s)")
    return parser


def _add_own_data_flags(parser: argparse.ArgumentParser) -> None:
    own = parser.add_argument_group(
        "your own data", "A log with one row per interaction (user, item, time, optional behaviour); an "
        "optional item file (one row per item: id, side features, a title) and user file (id, profile "
        "fields). Side features are categories; bucket numeric ones with --bucket.")
    own.add_argument("--interactions", type=Path, metavar="FILE",
                     help="the interaction log (.csv, .tsv or .parquet)")
    own.add_argument("--items", type=Path, metavar="FILE", help="item file: id + side-feature columns")
    own.add_argument("--users", type=Path, metavar="FILE", help="user file: id + profile columns")
    own.add_argument("--name", metavar="NAME", help="the name to prepare it under (then: --data NAME)")
    own.add_argument("--user-col", default="user_id", help="log column of the user id (default: %(default)s)")
    own.add_argument("--item-col", default="item_id", help="log column of the item id (default: %(default)s)")
    own.add_argument("--time-col", default="timestamp", help="log column of the time (default: %(default)s)")
    own.add_argument("--time-format", choices=TIME_FORMATS, default="auto",
                     help="seconds or milliseconds since the epoch, or ISO-8601 text (2024-03-01T09:30:00Z; "
                          "no offset = UTC); auto: ISO-8601 unless the first value is an integer, then "
                          "milliseconds if any value is >= 1e11, else seconds (default: %(default)s)")
    own.add_argument("--behavior-col", default=None,
                     help="log column of the behaviour type (click, buy...; default: 'behavior' if there "
                          "is one)")
    own.add_argument("--item-id-col", default=None,
                     help="item file's id column (default: the --item-col name)")
    own.add_argument("--item-cols", default=None, metavar="A,B",
                     help="item file's side-feature columns (default: all but the id and the title)")
    own.add_argument("--title-col", default=None,
                     help="item file's column of titles or names: shown to people, not a model feature")
    own.add_argument("--separator", action="append", default=[], metavar="COL=SEP",
                     help=f"separator of a multi-valued item column (default: {MULTI_VALUE_SEPARATOR!r} for "
                          "every item column; COL= makes it single-valued); repeatable")
    own.add_argument("--user-id-col", default=None,
                     help="user file's id column (default: the --user-col name)")
    own.add_argument("--profile-cols", default=None, metavar="A,B",
                     help="user file's profile columns (default: all but the id)")
    own.add_argument("--bucket", action="append", default=[], metavar="COL=N",
                     help="read the numeric item or user column COL as N quantile buckets (e.g. price=5); "
                          "repeatable")
    own.add_argument("--keep-missing", action="store_true",
                     help="keep log items (users) missing from the item (user) file, with unknown features "
                          "(default: an error naming the first)")


def _pairs(flag: str, values: list[str], kind: type) -> dict[str, Any]:
    """["price=5", ...] → {"price": 5}; UsageError naming the flag on a malformed pair."""
    out: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = kind(raw)
        except ValueError:
            example = "price=5" if kind is int else "tags=;"
            raise UsageError(f"{flag} {value!r}: expected COL={'N' if kind is int else 'SEP'}, "
                             f"e.g. {flag} {example}") from None
    return out


def _columns(flag: str, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    columns = tuple(c.strip() for c in value.split(",") if c.strip())
    if not columns:
        raise UsageError(f"{flag} {value!r}: give comma-separated column names, e.g. {flag} genre,brand")
    return columns


def _own_data(args: argparse.Namespace) -> int:
    """`mind-model data --interactions FILE ... --name NAME`: read, check, save as the prepared cache."""
    if not args.name:
        raise UsageError("--interactions needs --name NAME: the name train, evaluate and export will "
                         "know it by")
    name = check_own_name(args.name)
    buckets = _pairs("--bucket", args.bucket, int)
    bad = [f"{k}={n}" for k, n in buckets.items() if n < 2]
    if bad:
        raise UsageError(f"--bucket {bad[0]}: need at least 2 buckets")
    separators = _pairs("--separator", args.separator, str)
    item_columns = SideColumns(
        id=args.item_id_col, features=_columns("--item-cols", args.item_cols),
        default_separator=MULTI_VALUE_SEPARATOR,
        separators={k: v or None for k, v in separators.items()}, buckets=buckets, title=args.title_col,
    )
    user_columns = SideColumns(id=args.user_id_col, features=_columns("--profile-cols", args.profile_cols),
                               buckets=buckets)
    notes: list[str] = []
    data = load_interactions(
        args.interactions, items_path=args.items, users_path=args.users, name=name,
        on_missing="unknown" if args.keep_missing else "error",
        log_columns=LogColumns(user=args.user_col, item=args.item_col, time=args.time_col,
                               behavior=args.behavior_col, time_format=args.time_format),
        item_columns=item_columns, user_columns=user_columns, notes=notes,
    )
    used = set(data.item_feature_vocabs) | set(data.profile_vocabs)
    unused = sorted(set(buckets) - used)
    if unused:
        files = " or ".join(str(p) for p in (args.items, args.users) if p) or "(no item or user file given)"
        raise UsageError(f"--bucket {unused[0]}: no such feature column in {files}")
    path = save_own_dataset(data, args.cache_dir)
    print(summarize(data))
    single = sum(1 for s in data.sequences if len(s) < 2)
    for note in notes:
        print(f"  {note}")
    if single:
        print(f"  {single:,} users have a single behaviour: kept, but they give no training sample")
    print(f"wrote {path}; train on it with: mind-model train --data {name} --out runs/{name}")
    return 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr)


def load_data(source: str, cache_dir: Path) -> InteractionData:
    """A named dataset, your own data prepared under `source` in `cache_dir`, or a .npz cache file."""
    if source.endswith(".npz"):
        return load_dataset(source)
    return prepare_dataset(source, cache_dir, progress=_progress)


def _dataset_record(source: str, data: InteractionData, args: argparse.Namespace,
                    split: Any) -> dict[str, Any]:
    return {
        "name": data.name, "source": source, "num_users": data.num_users, "num_items": data.num_items,
        "num_interactions": data.num_interactions,
        "split": {"valid_fraction": args.valid_fraction, "test_fraction": args.test_fraction,
                  "seed": args.split_seed, "train_users": len(split.train_users),
                  "valid_users": len(split.valid_users), "test_users": len(split.test_users)},
    }


def _split(data: InteractionData, record_or_args: Any) -> Any:
    if isinstance(record_or_args, dict):
        s = record_or_args["split"]
        return user_split(data, valid_fraction=s["valid_fraction"], test_fraction=s["test_fraction"],
                          seed=s["seed"])
    a = record_or_args
    return user_split(data, valid_fraction=a.valid_fraction, test_fraction=a.test_fraction, seed=a.split_seed)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def cmd_data(args: argparse.Namespace) -> int:
    if args.interactions is not None:
        if args.dataset:
            raise UsageError(f"give either a dataset name ({args.dataset}) or --interactions FILE, not both")
        return _own_data(args)
    if args.dataset is None:
        raise UsageError(f"name a dataset ({', '.join(DATASET_NAMES)}) or give your own with "
                         "--interactions FILE --name NAME (see --help)")
    own_flags = [f"--{k.replace('_', '-')}" for k in ("items", "users", "name") if getattr(args, k)]
    if own_flags:
        raise UsageError(f"{own_flags[0]} belongs to your own data: add --interactions FILE")
    data = prepare_dataset(args.dataset, args.cache_dir, refresh=args.refresh, progress=_progress)
    print(summarize(data))
    return 0


def _train_one(choice: str, config: MindConfig, data: InteractionData, split: Any, run_dir: Path,
               record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from model.train import train_model, write_run

    kind, config = resolve_model_choice(choice, config)
    print(f"training {choice} on {data.name}: {len(split.train_users)} train users, "
          f"{len(split.valid_users)} validation users -> {run_dir}", file=sys.stderr)
    result = train_model(kind, config, data, split.train_users, split.valid_users,
                         progress=not args.no_progress, threads=args.threads, log=_progress)
    version = write_run(run_dir, result, data, record)
    print(f"{choice}: {result.num_samples:,} samples, best epoch {result.best_epoch}, "
          f"trained in {result.train_seconds:.0f}s, model version {version}", file=sys.stderr)
    return {"model": result.model, "train_seconds": round(result.train_seconds, 1),
            "best_epoch": result.best_epoch, "validation": result.best_validation, "model_version": version}


def write_held_out_users(path: Path, data: InteractionData, split: Any) -> None:
    """Raw ids of the validation and test users: what a demo or a serving check may treat as unseen."""
    held_out = {"validation": [str(data.user_ids[int(u)]) for u in split.valid_users],
                "test": [str(data.user_ids[int(u)]) for u in split.test_users]}
    path.write_text(json.dumps(held_out) + "\n")


def cmd_train(args: argparse.Namespace) -> int:
    config = _config_from(args)
    data = load_data(args.data, args.cache_dir)
    split = _split(data, args)
    record = _dataset_record(args.data, data, args, split)
    trained = _train_one(args.model, config, data, split, args.out, record, args)
    write_held_out_users(args.out / "held_out_users.json", data, split)
    print(format_table({f"{args.model} (validation)": trained["validation"]}))
    print(f"wrote {args.out / 'checkpoint.pt'} and {args.out / 'metrics.json'}; "
          f"test it with: mind-model evaluate {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.train import evaluate_popular

    _set_threads(args.threads)
    checkpoint = load_checkpoint(args.run_dir)
    record = checkpoint.dataset
    if "source" not in record or "split" not in record:
        raise UsageError(f"{args.run_dir}: checkpoint does not record its dataset and split; re-train it")
    data = load_data(record["source"], args.cache_dir)
    if list(data.item_ids) != list(checkpoint.vocabularies["item_ids"]):
        raise UsageError(f"{args.run_dir}: dataset {record['source']} has other items than at training time; "
                         "re-train the run on the current dataset")
    split = _split(data, record)
    config = checkpoint.config
    label = (f"{checkpoint.model_kind} K={config.num_interests}" if checkpoint.model_kind == "mind"
             else checkpoint.model_kind)
    results = {
        label: evaluate_scorer(model_scorer(checkpoint.model, config.max_history_length), data.sequences,
                               data.user_profile, split.test_users, config.holdout_fraction),
        "popular": evaluate_popular(data, split.train_users, split.test_users, config.holdout_fraction),
    }
    diagnosed = {label: diagnose_interests(checkpoint.model, config.max_history_length, data.sequences,
                                           data.user_profile, split.test_users, config.holdout_fraction)}
    out = args.run_dir / "evaluation.json"
    out.write_text(json.dumps({"model_version": checkpoint.model_version, "dataset": record,
                               "test_users": len(split.test_users), "results": results,
                               "diagnostics": diagnosed}, indent=2) + "\n")
    print(format_table(results))
    print(_diagnostics_heading(diagnosed))
    print(format_diagnostics(diagnosed))
    print(f"test users: {len(split.test_users)}; wrote {out}")
    return 0


def _diagnostics_heading(diagnosed: dict[str, Any]) -> str:
    n = next(iter(diagnosed.values()))["top_n"]
    return (f"\ninterests (same test users, user-split histories; merged top-{n} by the model's merge) and "
            "stability (users with a full window, one real next event appended):")


def cmd_compare(args: argparse.Namespace) -> int:
    from model.train import environment, evaluate_popular

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(COMPARE_MODELS))
    if unknown or not models:
        raise UsageError(f"--models: unknown {unknown or 'empty list'}; "
                         f"choose from {', '.join(COMPARE_MODELS)}")
    config = _config_from(args)
    data = load_data(args.data, args.cache_dir)
    split = _split(data, args)
    record = _dataset_record(args.data, data, args, split)
    out_dir = args.out or Path("runs") / f"compare-{data.name}"
    results: dict[str, Any] = {}
    diagnosed: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    started = time.perf_counter()
    for choice in models:
        if choice == "popular":
            results["popular"] = evaluate_popular(data, split.train_users, split.test_users,
                                                  config.holdout_fraction)
            continue
        trained = _train_one(choice, config, data, split, out_dir / choice, record, args)
        results[choice] = evaluate_scorer(model_scorer(trained["model"], config.max_history_length),
                                          data.sequences, data.user_profile, split.test_users,
                                          config.holdout_fraction)
        diagnosed[choice] = diagnose_interests(trained["model"], config.max_history_length, data.sequences,
                                               data.user_profile, split.test_users, config.holdout_fraction)
        runs[choice] = {k: v for k, v in trained.items() if k != "model"}
        print(format_table({choice: results[choice]}), file=sys.stderr)
    summary = {"dataset": record, "config": config.to_dict(), "test_users": len(split.test_users),
               "results": results, "diagnostics": diagnosed, "runs": runs,
               "total_seconds": round(time.perf_counter() - started, 1), "environment": environment()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{data.name}: {len(split.test_users)} test users, exact retrieval over {data.num_items} items")
    print(format_table(results))
    if diagnosed:
        print(_diagnostics_heading(diagnosed))
        print(format_diagnostics(diagnosed))
    for choice, run in runs.items():
        print(f"  {choice}: trained in {run['train_seconds']:.0f}s (best epoch {run['best_epoch']})")
    print(f"wrote {out_dir / 'compare.json'}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from model.explain import explain_user, plot_explanation

    _set_threads(1)
    checkpoint = load_checkpoint(args.run_dir)
    data = load_data(checkpoint.dataset.get("source", ""), args.cache_dir)
    explanation = explain_user(checkpoint.model, data, args.user)
    path = plot_explanation(explanation, args.out)
    strongest = np.argmax(explanation.coupling, axis=1) if explanation.coupling.size else []
    print(f"user {args.user}: {len(explanation.behaviour_labels)} behaviours -> "
          f"{explanation.coupling.shape[1]} interests; behaviours per interest: "
          f"{np.bincount(strongest, minlength=explanation.coupling.shape[1]).tolist()}")
    print(f"mean pairwise cosine of the interests: {explanation.pairwise_cosine:.3f}")
    for j, (items, scores) in enumerate(zip(explanation.interest_top_items, explanation.interest_top_scores,
                                            strict=True)):
        print(f"  interest {j + 1} retrieves:")
        for label, score in zip(items, scores, strict=True):
            print(f"    {score:7.3f}  {label}")
    print(f"  merged top {len(explanation.merged_top)} (recall's merge; [interest]):")
    for label, k in explanation.merged_top:
        print(f"    [{k + 1}] {label}")
    print(f"wrote {path}")
    return 0


COMMANDS = {"data": cmd_data, "train": cmd_train, "evaluate": cmd_evaluate, "compare": cmd_compare,
            "explain": cmd_explain}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as error:
        message = str(error)
        print(message if message.startswith("mind-model") else f"mind-model: error: {message}",
              file=sys.stderr)
    except (DataError, ConfigError, CheckpointError, OSError) as error:
        print(f"mind-model: error: {error}", file=sys.stderr)
    except KeyError as error:
        print(f"mind-model: error: {error.args[0] if error.args else error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("mind-model: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

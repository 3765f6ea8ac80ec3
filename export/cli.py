"""`mind-export`: Export a trained MIND checkpoint to a serving artifact, or verify an artifact.

    mind-export RUN_DIR --out ARTIFACT_DIR        export, check parity, write the artifact
    mind-export verify ARTIFACT_DIR [--run RUN]   validate files and hashes, run the ONNX tower on sample
                                                  histories, and re-run parity when torch and the run exist
    mind-export evaluate ARTIFACT_DIR             score what is served (ONNX tower + item vectors + the
                                                  served merge) on the run's held-out users, per diversity

Bad input prints one line on stderr and exits 2 (usage) or 1 (the run, data or artifact is wrong).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.artifact import ArtifactError

VERIFY = "verify"
EVALUATE = "evaluate"


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mind-export",
        description="Export a trained MIND checkpoint to a serving artifact (or: "
                    "mind-export verify ARTIFACT_DIR).",
    )
    parser.add_argument("run_dir", type=Path,
                        help="training run directory holding checkpoint.pt (or the .pt file)")
    parser.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest |onnxruntime - torch| accepted by the parity check (default 1e-4)")
    parser.add_argument("--dataset-cache", type=Path, default=None,
                        help="dataset .npz (mind-model data) whose user histories join the parity check; "
                             "default: the one the checkpoint names, if it exists")
    parser.add_argument("--with-coupling", action="store_true",
                        help="also output the coupling coefficients (B, L, K) from the ONNX graph")
    return parser


def build_verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mind-export verify", description="Validate a serving artifact.")
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--run", type=Path, default=None,
                        help="run directory (or checkpoint) to re-run parity against; default: "
                             "the one in the manifest")
    parser.add_argument("--dataset-cache", type=Path, default=None,
                        help="dataset .npz whose user histories join the parity check")
    parser.add_argument("--no-parity", action="store_true", help="skip the PyTorch parity re-run")
    return parser


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mind-export evaluate",
        description="Score the served artifact (ONNX tower, item vectors, the served merge) on the "
                    "validation and test users of the run it was exported from, for each diversity; choose "
                    "the serving diversity on validation users.")
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--diversity", default="0,0.25,0.5,1",
                        help="comma-separated diversities λ to evaluate (default: %(default)s)")
    parser.add_argument("--users", default="validation,test",
                        help="comma-separated groups of held-out users: validation, test "
                             "(default: %(default)s)")
    parser.add_argument("--top-n", type=int, default=50,
                        help="length of the merged list (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=Path("data"),
                        help="where the run's dataset is cached (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return build_export_parser()


def _fail(message: str) -> int:
    print(f"mind-export: error: {message}", file=sys.stderr)
    return 1


def _quiet_exporter() -> None:
    # The torch exporter logs a warning per missing optional package (torchvision ops); not our business.
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == VERIFY:
        return _verify(build_verify_parser().parse_args(argv[1:]))
    if argv and argv[0] == EVALUATE:
        return _evaluate(build_evaluate_parser().parse_args(argv[1:]))
    return _export(build_export_parser().parse_args(argv))


def _export(args: argparse.Namespace) -> int:
    if not args.tolerance > 0:
        return _fail(f"--tolerance must be > 0, got {args.tolerance}")
    try:
        from export.onnx_export import ExportError, export_artifact, load_run, real_histories_for
    except ImportError as exc:
        return _fail(f"export needs the training extras (torch, onnx): {exc}; pip install -e '.[train]'")
    _quiet_exporter()
    try:
        checkpoint = load_run(args.run_dir)
        histories, source = real_histories_for(checkpoint, args.dataset_cache)
        manifest, report = export_artifact(
            checkpoint, args.out, real_histories=histories, tolerance=args.tolerance,
            with_coupling=args.with_coupling
        )
    except (ExportError, ArtifactError) as exc:
        return _fail(str(exc))
    print(f"wrote {args.out}: model {manifest.model_version}, {manifest.num_items:,} items, "
          f"d={manifest.embedding_dim}, "
          f"K={manifest.num_interests}, max history {manifest.max_history_length}, opset {manifest.opset}")
    print(f"{report.summary()}; real histories: {source}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from export.runtime import UserTowerRuntime

    try:
        runtime = UserTowerRuntime.load(args.artifact_dir)
        print(f"{args.artifact_dir}: files and sha256 ok; model {runtime.manifest.model_version}")
        print(smoke_check(runtime))
    except (ArtifactError, ValueError) as exc:
        return _fail(str(exc))
    if args.no_parity:
        return 0
    try:
        import torch  # noqa: F401

        from export.onnx_export import ExportError, load_run, real_histories_for, verify_against_checkpoint
    except ImportError:
        print("parity: skipped (torch is not installed here); files, hashes and the ONNX run were checked")
        return 0
    _quiet_exporter()
    run = args.run or _recorded_checkpoint(runtime)
    if run is None:
        print("parity: skipped (no --run given and the checkpoint recorded in the manifest is gone)")
        return 0
    try:
        checkpoint = load_run(run)
        if args.run is None and checkpoint.model_version != runtime.manifest.model_version:
            print(f"parity: skipped (the recorded checkpoint {run} is now model {checkpoint.model_version}; "
                  f"pass --run with the run of {runtime.manifest.model_version})")
            return 0
        histories, source = real_histories_for(checkpoint, args.dataset_cache)
        report = verify_against_checkpoint(args.artifact_dir, checkpoint, real_histories=histories)
    except (ExportError, ArtifactError) as exc:
        return _fail(str(exc))
    print(f"{report.summary()}; against {run}; real histories: {source}")
    return 0 if report.passed else _fail(f"{args.artifact_dir}: parity failed; re-export the artifact")


def _evaluate(args: argparse.Namespace) -> int:
    import json

    try:
        from export.evaluate import evaluate_artifact, format_evaluation
    except ImportError as exc:
        return _fail(f"evaluate needs the training extras (torch, for the dataset and metrics): {exc}; "
                     "pip install -e '.[train]'")
    try:
        diversities = [float(text) for text in args.diversity.split(",") if text.strip()]
    except ValueError:
        return _fail(f"--diversity {args.diversity!r}: give comma-separated numbers, e.g. 0,0.25,0.5,1")
    if not 1 <= args.top_n <= 1000:
        return _fail(f"--top-n must be between 1 and 1000, got {args.top_n}")
    try:
        summary = evaluate_artifact(args.artifact_dir, cache_dir=args.cache_dir, diversities=diversities,
                                    groups=[g.strip() for g in args.users.split(",") if g.strip()],
                                    n=args.top_n)
    except (ArtifactError, ValueError) as exc:
        return _fail(str(exc))
    print(format_evaluation(summary))
    if "chosen_diversity" in summary:
        print(f"chosen by validation user-split Recall@{args.top_n}: "
              f"diversity {summary['chosen_diversity']:g}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _recorded_checkpoint(runtime) -> Path | None:
    recorded = runtime.manifest.source.get("checkpoint")
    return Path(recorded) if recorded and Path(recorded).is_file() else None


def smoke_check(runtime, seed: int = 0) -> str:
    """Run the ONNX tower on sample raw histories of several lengths and check shapes, finiteness and the
    K'u mask rule (numpy only). Raises ValueError naming what is wrong; returns a one-line summary."""
    manifest = runtime.manifest
    rng = np.random.default_rng(seed)
    item_ids = runtime.item_ids()
    lengths = sorted({1, 2, 3, 4, 7, 8, manifest.max_history_length, manifest.max_history_length + 5})
    histories = [[item_ids[i] for i in rng.integers(0, len(item_ids), n)] for n in lengths]
    histories.append(["<no such item>"])  # unknown ids are dropped → an empty history
    output = runtime.infer_raw(histories, [None] * len(histories))
    k, d = manifest.num_interests, manifest.embedding_dim
    if output.interest_vectors.shape != (len(histories), k, d):
        raise ValueError(f"{runtime.artifact_dir}: interest_vectors shape {output.interest_vectors.shape} ≠ "
                         f"({len(histories)}, {k}, {d}); re-export the artifact")
    if not np.all(np.isfinite(output.interest_vectors)):
        raise ValueError(f"{runtime.artifact_dir}: the ONNX tower produced non-finite "
                         "interest vectors; re-export")
    kept = [min(len(h), manifest.max_history_length) for h in histories[:-1]] + [0]
    if manifest.adaptive_interests:
        expected = np.array([[j == 0 or n >= 2 ** (j + 1) for j in range(k)] for n in kept])
        rule = "K'u = max(1, min(K, floor(log2 n)))"
    else:
        expected, rule = np.ones((len(histories), k), dtype=bool), "all K interests valid"
    if not np.array_equal(output.valid_interest_mask, expected):
        raise ValueError(f"{runtime.artifact_dir}: valid_interest_mask "
                         f"{output.valid_interest_mask.astype(int).tolist()} "
                         f"does not follow {rule} for lengths {kept}; re-export the artifact")
    return (f"onnx run ok: {len(histories)} sample histories of lengths {kept} -> "
            f"({len(histories)}, {k}, {d}); "
            f"mask follows {rule}")

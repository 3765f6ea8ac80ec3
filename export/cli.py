"""`mind-export`: Export a trained MIND checkpoint to a serving artifact."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="mind-export", description="Export a trained MIND checkpoint to a serving artifact.")


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

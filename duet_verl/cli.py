"""``duet-verl`` command line: ``bench`` (more subcommands arrive with the verl integration)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``duet-verl`` console script."""
    parser = argparse.ArgumentParser(prog="duet-verl", description="DUET token-budget allocation for verl.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time the allocator and the stop/abort monitor; last line is JSON")
    bench.add_argument("--repeats", type=int, default=30, help="timed repetitions per measurement (median)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``duet-verl`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from duet_verl.bench import main as bench_main

        if args.repeats < 1:
            build_parser().error("--repeats must be >= 1")
        return bench_main(args.repeats)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Runs the named benchmarks (all when none is named)."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = (
    "upload",
    "watch",
    "transcode",
    "transcribe",
    "pipeline",
    "throughput",
    "vision",
    "webhooks",
    "reuse",
    "queue",
    "segmentation",
    "clips",
    "scale",
    "browser",
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], default=[])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        module.main(quick=args.quick)


if __name__ == "__main__":
    main()

"""``python -m subq.bench [--only NAME ...] [--quick] [--out DIR] [--device DEV]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from subq.bench.harness import registered_benchmarks, run_benchmarks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m subq.bench`` and ``subq bench``."""
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", metavar="DIR", help="write <name>.json files here")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--list", action="store_true", help="list registered benchmarks and exit")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check the arguments (usage errors through ``parser``), then run and report."""
    if args.list:
        print("\n".join(sorted(registered_benchmarks())))
        return 0
    if args.only:
        known = registered_benchmarks()
        unknown = [name for name in args.only if name not in known]
        if unknown:
            parser.error(
                f"argument --only: unknown benchmark(s) {unknown}; choose from {sorted(known)}"
            )
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as err:
            parser.error(f"argument --device: {args.device!r} is not a torch device ({err})")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"argument --device: {args.device!r}, but CUDA is not available here")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"argument --out: {args.out!r} exists and is not a directory")
    rows = run_benchmarks(args.only, device=args.device, out_dir=args.out, quick=args.quick)
    return 0 if rows else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subq.bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())

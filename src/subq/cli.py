"""The ``subq`` command.

* ``subq info``: versions, devices, and which backend each op would use and why;
* ``subq demo``: train small LMs with different mixers on associative recall (MQAR) and compare;
* ``subq bench``: run the registered benchmarks on this machine's device.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
from collections.abc import Callable, Sequence

import torch

__all__ = ["main"]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    """Versions, devices, and which backend each op would use on each device, and why."""
    from subq.ops import registered_ops
    from subq.ops.capabilities import module_available

    print(f"subq {_version('subq')}  python {platform.python_version()}  torch {torch.__version__}")
    for dist in ("jaxtyping", "beartype", "attrs", "triton", "quack-kernels", "nvidia-cutlass-dsl"):
        print(f"  {dist:<20} {_version(dist)}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            print(f"  cuda:{i}  {torch.cuda.get_device_name(i)}  (sm_{major}{minor})")
            devices.append(f"cuda:{i}")
    else:
        print("  CUDA: not available")
    for name in ("triton", "quack"):
        reason = module_available(name)
        print(f"  import {name}: {'ok' if reason is None else reason}")
    dtype = torch.bfloat16
    print(f"\nBackend choice per op ({dtype}, typical sizes):")
    for name, op in sorted(registered_ops().items()):
        for device in devices:
            facts = {"device": device, "dtype": dtype, **op.example_facts}
            try:
                decision = str(op.decide(facts))
            except Exception as err:  # explain every op even if one cannot run here
                decision = f"{name}: {err}"
            print(f"[{device}] {decision}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Compare mixers on MQAR; write results.json, configs and a plot into ``--out``."""
    from subq.demo import DemoConfig, DemoSettingsError, run_demo

    # Bad settings are found before any training and reported as a usage error; an error raised
    # while training is a fault, and keeps its traceback.
    try:
        cfg = DemoConfig(
            mixers=tuple(args.mixers),
            seq_len=args.seq_len,
            pairs=args.pairs,
            width=args.width,
            vocab_size=args.vocab_size,
            num_layers=args.layers,
            epochs=args.epochs,
            num_train=args.train_examples,
            num_test=args.test_examples,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
            quick=args.quick,
        )
    except ValueError as err:
        print(f"subq demo: error: {err}", file=sys.stderr)
        return 2
    try:
        run_demo(cfg, args.out, progress=not args.no_progress)
    except DemoSettingsError as err:
        print(f"subq demo: error: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the registered benchmarks (``subq.bench``), print the table, write JSON."""
    from subq.bench.__main__ import run

    return run(args, args.parser)


def _add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from subq.demo import DEFAULT_MIXERS

    p.add_argument(
        "--mixers",
        nargs="+",
        default=list(DEFAULT_MIXERS),
        metavar="NAME",
        help="registered mixers to compare (default: %(default)s)",
    )
    p.add_argument("--seq-len", type=_positive_int, default=64, help="sequence length L")
    p.add_argument("--pairs", type=_positive_int, default=4, help="key-value pairs kv")
    p.add_argument("--width", type=_positive_int, default=64, help="model width d")
    p.add_argument("--vocab-size", type=_positive_int, default=256, help="vocabulary size V")
    p.add_argument("--layers", type=_positive_int, default=2, help="blocks per model")
    p.add_argument(
        "--epochs", type=_positive_int, default=None, help="maximum epochs (default 10; 2 quick)"
    )
    p.add_argument(
        "--train-examples", type=_positive_int, default=None, help="default 10000 (1000 quick)"
    )
    p.add_argument(
        "--test-examples", type=_positive_int, default=None, help="default 1000 (200 quick)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument(
        "--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)"
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smoke test of a few seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from subq.bench.__main__ import add_arguments

    add_arguments(p)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "info": (cmd_info, "versions, devices and backend choices"),
    "demo": (cmd_demo, "compare mixers on associative recall (MQAR)"),
    "bench": (cmd_bench, "run the registered benchmarks on this device"),
}

_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "demo": _add_demo_arguments,
    "bench": _add_bench_arguments,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(parser=p)  # commands report usage errors through their own parser
        if name in _ARGUMENTS:
            _ARGUMENTS[name](p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][0](args)


if __name__ == "__main__":
    sys.exit(main())

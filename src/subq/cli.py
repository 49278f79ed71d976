"""The ``subq`` command: ``subq info`` (and, as they land, ``subq demo`` and ``subq bench``)."""

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


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "info": (cmd_info, "versions, devices and backend choices"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="subq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][0](args)


if __name__ == "__main__":
    sys.exit(main())

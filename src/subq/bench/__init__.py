"""Benchmarks: a shared timer, a registry of named benchmarks, a table printer and JSON output.

Each family registers its benchmark in its own module ``subq.bench.<family>`` with
:func:`register_benchmark`; ``python -m subq.bench`` runs them. Importing this package does not
import any benchmark module (they are discovered by :func:`run_benchmarks`).
"""

from subq.bench.harness import (
    Timing,
    benchmark,
    copy_bandwidth,
    print_table,
    register_benchmark,
    registered_benchmarks,
    run_benchmarks,
    write_json,
)

__all__ = [
    "Timing",
    "benchmark",
    "copy_bandwidth",
    "print_table",
    "register_benchmark",
    "registered_benchmarks",
    "run_benchmarks",
    "write_json",
]

"""The shared benchmark timer, registry, table printer and JSON writer.

Timing on CUDA uses CUDA events around each call after a warm-up, and reports the median (and
10th/90th percentiles) over the repetitions. Callers pass several input sets that together exceed
the L2 cache (see :func:`rotation_count`), and the timer rotates over them, so a kernel is not
timed re-reading data the previous repetition left in cache. On CPU the timer uses wall-clock
``time.perf_counter``.
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
import pkgutil
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

__all__ = [
    "Timing",
    "bandwidth_columns",
    "benchmark",
    "copy_bandwidth",
    "device_info",
    "print_table",
    "register_benchmark",
    "registered_benchmarks",
    "rotation_count",
    "run_benchmarks",
    "tensor_bytes",
    "write_json",
]

BenchmarkFn = Callable[[torch.device, bool], list[dict[str, Any]]]

_BENCHMARKS: dict[str, BenchmarkFn] = {}
_COPY_BANDWIDTH: dict[tuple[str, int], float] = {}
# Modules of subq.bench that are infrastructure, not benchmarks.
_NOT_BENCHMARKS = frozenset({"harness", "__main__"})
# When the device does not report its L2 size; 50 MB is the H100's.
_DEFAULT_CACHE_BYTES = 50 * 2**20


@attrs.frozen
class Timing:
    """Per-call time statistics of one benchmarked function, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    reps: int

    def to_dict(self) -> dict[str, float | int]:
        return attrs.asdict(self)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default).
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _first_device(inputs: Iterable[tuple]) -> torch.device:
    for args in inputs:
        for a in args:
            if isinstance(a, torch.Tensor):
                return a.device
    return torch.device("cpu")


def benchmark(
    fn: Callable[..., Any],
    inputs: list[tuple],
    *,
    warmup: int = 5,
    reps: int = 30,
    device: torch.device | str | None = None,
) -> Timing:
    """Time ``fn(*inputs[i % len(inputs)])`` for ``reps`` calls after ``warmup`` untimed calls.

    Args:
        fn: the function to time; its result is discarded.
        inputs: argument tuples, rotated over from call to call. Give enough of them that their
            total size exceeds the L2 cache (:func:`rotation_count`).
        warmup: untimed calls first (compilation, autotuning, allocator warm-up).
        reps: timed calls; the statistics are over these.
        device: where ``fn`` runs; default: the device of the first tensor in ``inputs``.

    Returns:
        Median and 10th/90th percentile time per call, from CUDA events on CUDA devices and
        wall-clock time otherwise.
    """
    if not inputs:
        raise ValueError("benchmark: inputs must hold at least one argument tuple, got []")
    for i, args in enumerate(inputs):
        if not isinstance(args, tuple):
            # A bare tensor would be unpacked along its first axis, silently.
            raise TypeError(
                f"benchmark: inputs must be a list of argument tuples, got inputs[{i}] of type "
                f"{type(args).__name__}"
            )
    if reps < 1 or warmup < 0:
        raise ValueError(f"benchmark: expected reps >= 1 and warmup >= 0, got {reps=}, {warmup=}")
    device = torch.device(device) if device is not None else _first_device(inputs)
    n = len(inputs)
    for i in range(warmup):
        fn(*inputs[i % n])
    times: list[float] = []
    if device.type == "cuda":
        with torch.cuda.device(device):
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            torch.cuda.synchronize()
            for i in range(reps):
                starts[i].record()
                fn(*inputs[(warmup + i) % n])
                ends[i].record()
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    else:
        for i in range(reps):
            args = inputs[(warmup + i) % n]
            t0 = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return Timing(
        median_ms=_quantile(times, 0.5),
        p10_ms=_quantile(times, 0.1),
        p90_ms=_quantile(times, 0.9),
        reps=reps,
    )


def bandwidth_columns(timing: Timing, nbytes: int, copy_bw: float) -> dict[str, float]:
    """A row's timing columns: median and percentiles, effective TB/s of ``nbytes`` per call,
    and that bandwidth as a fraction of ``copy_bw`` (bytes/s, from :func:`copy_bandwidth`)."""
    rate = nbytes / (timing.median_ms * 1e-3)
    return {
        "ms": timing.median_ms,
        "p10_ms": timing.p10_ms,
        "p90_ms": timing.p90_ms,
        "TB/s": rate / 1e12,
        "frac_copy": rate / copy_bw,
    }


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Total storage bytes of the given tensors (``None`` counts as zero)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def rotation_count(
    bytes_per_set: int, device: torch.device | str, *, factor: float = 2.0, max_sets: int = 64
) -> int:
    """How many input sets of ``bytes_per_set`` bytes to rotate over to exceed ``factor`` × L2.

    On CPU this returns 1 (timings there are indicative only).
    """
    device = torch.device(device)
    if bytes_per_set <= 0:
        raise ValueError(f"rotation_count: bytes_per_set must be positive, got {bytes_per_set}")
    if device.type != "cuda":
        return 1
    props = torch.cuda.get_device_properties(device)
    cache = getattr(props, "L2_cache_size", 0) or _DEFAULT_CACHE_BYTES
    return max(1, min(max_sets, math.ceil(factor * cache / bytes_per_set)))


def copy_bandwidth(device: torch.device | str, nbytes: int = 2**30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s, counting bytes read plus written.

    Copies a buffer of ``nbytes`` bytes (capped at 64 MiB on CPU, where the figure only serves to
    fill "fraction of copy" columns in smoke runs). Cached per device and size for the process, so
    every benchmark in one run divides by the same figure.
    """
    if nbytes <= 0:
        raise ValueError(f"copy_bandwidth: nbytes must be positive, got {nbytes}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda":
        nbytes = min(nbytes, 2**26)
    key = (str(device), nbytes)
    if key not in _COPY_BANDWIDTH:
        src = torch.empty(nbytes, dtype=torch.uint8, device=device)
        src.fill_(1)
        dst = torch.empty_like(src)
        timing = benchmark(dst.copy_, [(src,)], warmup=3, reps=20 if device.type == "cuda" else 5)
        _COPY_BANDWIDTH[key] = 2 * nbytes / (timing.median_ms * 1e-3)
        del src, dst
    return _COPY_BANDWIDTH[key]


def device_info(device: torch.device | str) -> dict[str, Any]:
    """Facts recorded alongside benchmark results: device name, versions, date."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


def register_benchmark(name: str) -> Callable[[BenchmarkFn], BenchmarkFn]:
    """Register ``fn(device, quick) -> rows`` as the benchmark called ``name``.

    Each row is a dict of plain JSON-able values (one line of the printed table). With
    ``quick=True`` the benchmark must use tiny sizes that run on CPU in seconds.
    """

    def decorate(fn: BenchmarkFn) -> BenchmarkFn:
        existing = _BENCHMARKS.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (
            fn.__module__,
            fn.__qualname__,
        ):
            raise ValueError(
                f"register_benchmark: name {name!r} is already taken by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        _BENCHMARKS[name] = fn
        return fn

    return decorate


def _discover() -> dict[str, str]:
    """Import every benchmark module of ``subq.bench``; return import failures by module."""
    import subq.bench

    failures: dict[str, str] = {}
    for info in pkgutil.iter_modules(subq.bench.__path__):
        if info.name in _NOT_BENCHMARKS:
            continue
        try:
            importlib.import_module(f"subq.bench.{info.name}")
        except Exception as err:  # reported below; one broken module must not hide the rest
            failures[info.name] = f"{type(err).__name__}: {err}"
    return failures


def registered_benchmarks() -> dict[str, BenchmarkFn]:
    """All benchmarks, after importing every module of ``subq.bench``."""
    failures = _discover()
    for module, reason in failures.items():
        print(f"subq.bench: could not import subq.bench.{module}: {reason}", file=sys.stderr)
    return dict(_BENCHMARKS)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], file: Any = None) -> None:
    """Print rows as aligned text tables, one per ``bench`` value, columns in first-seen order."""
    file = sys.stdout if file is None else file
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row.get("bench"), []).append(row)
    for bench, group in groups.items():
        columns: list[str] = []
        for row in group:
            columns += [k for k in row if k not in columns and k != "bench"]
        cells = [[_fmt(row.get(c, "")) for c in columns] for row in group]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        print(f"\n== {bench} ==", file=file)
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=file)
        print("  ".join("-" * w for w in widths), file=file)
        for r in cells:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)), file=file)


def write_json(rows: Sequence[dict[str, Any]], path: str | Path, meta: dict | None = None) -> Path:
    """Write ``{"meta": meta, "rows": rows}`` as strict JSON to ``path`` (parents created).

    Non-finite floats (a ratio with no peer in the run) are written as ``null``: ``NaN`` is not
    JSON and strict parsers reject it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = _finite_or_none({"meta": meta or {}, "rows": list(rows)})
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return path


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def run_benchmarks(
    names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    out_dir: str | Path | None = None,
    quick: bool = False,
) -> list[dict[str, Any]]:
    """Run registered benchmarks, print their table, and write ``<out_dir>/<name>.json``.

    Args:
        names: benchmarks to run (default: all, in name order).
        device: default ``cuda`` if available, else ``cpu``.
        out_dir: where to write one JSON file per benchmark; none written if None.
        quick: tiny sizes (a smoke test).

    Returns:
        All rows, each with ``bench`` set to its benchmark's name if the row had none.
    """
    failures = _discover()
    if names is None:
        if failures:
            raise ImportError(f"subq.bench: benchmark modules failed to import: {failures}")
        names = sorted(_BENCHMARKS)
    else:
        missing = [n for n in names if n not in _BENCHMARKS]
        if missing:
            raise ValueError(
                f"run_benchmarks: names must be among {sorted(_BENCHMARKS)}, got unknown "
                f"{missing}" + (f"; modules that failed to import: {failures}" if failures else "")
            )
        for module, reason in failures.items():
            print(f"subq.bench: could not import subq.bench.{module}: {reason}", file=sys.stderr)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    meta = device_info(device) | {"quick": quick}
    all_rows: list[dict[str, Any]] = []
    for name in names:
        rows = [{"bench": name} | row for row in _BENCHMARKS[name](device, quick)]
        if out_dir is not None:
            write_json(rows, Path(out_dir) / f"{name}.json", meta | {"bench": name})
        all_rows += rows
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"# {meta['device_name']} ({meta['device']}), torch {meta['torch']}, {meta['date']}")
    print_table(all_rows)
    return all_rows

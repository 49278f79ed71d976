"""``subq demo``: train small LMs with different mixers on MQAR and compare their recall.

The default run reproduces the associative-recall gap of Zoology (Arora et al., 2023) at a size
that trains in minutes on a CPU: 2-layer models of width 64 on MQAR with ``V = 256, L = 64,
kv = 4``. Attention (after a short convolution) solves the task; Hyena at this width does not.
Outputs, in the output folder: ``results.json`` (settings, per-mixer accuracy per epoch, wall
times), ``config_<mixer>.json`` (the model spec — ``instantiate`` rebuilds it — plus the task and
training settings), and ``accuracy.png`` (test accuracy per epoch per mixer).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from attrs import validators as v

from subq import _validators as check
from subq.lazy_config import to_json
from subq.models.lm import build_lm, check_mixer_names, lm_spec
from subq.tasks.mqar import MQARConfig, MQARData, make_mqar
from subq.train import TrainConfig, fit

__all__ = [
    "DEFAULT_MIXERS",
    "REFERENCE_ACCURACY",
    "DemoConfig",
    "DemoSettingsError",
    "reference_accuracy",
    "run_demo",
]

DEFAULT_MIXERS = ("attention", "hyena")

#: MQAR test accuracy reported by Zoology (Arora et al., 2023, fig. 2; 2 layers, no MLP), keyed by
#: (mixer, seq_len, pairs, width). Attention solves every (L, kv) setting of the paper at every
#: width it tried.
REFERENCE_ACCURACY: dict[tuple[str, int, int, int], float] = {
    ("hyena", 64, 4, 64): 0.52,
    ("hyena", 128, 8, 64): 0.18,
    **{
        ("attention", length, kv, width): 1.0
        for length, kv in ((64, 4), (128, 8), (256, 16), (512, 64))
        for width in (64, 128, 256, 512)
    },
}


def reference_accuracy(mixer: str, seq_len: int, pairs: int, width: int) -> float | None:
    """The paper's accuracy for this setting, or None where it reports none."""
    return REFERENCE_ACCURACY.get((mixer, seq_len, pairs, width))


def _tuple_of_names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen(kw_only=True)
class DemoConfig:
    """Settings of a demo run.

    Attributes:
        mixers: registered mixer names to compare.
        seq_len: MQAR sequence length ``L``.
        pairs: key–value pairs ``kv``.
        width: model width ``d``.
        vocab_size: ``V``.
        num_layers: blocks per model.
        epochs: maximum epochs (training stops early at 0.99 test accuracy).
        num_train: training examples (10 000; 1 000 with ``quick``). Zoology-style CPU runs use
            20 000; half of that keeps the default run under 5 minutes on 2 CPU cores even when
            other processes share them, and attention still reaches 0.99 in 3 epochs.
        num_test: test examples (1 000; 200 with ``quick``).
        batch_size: examples per step.
        lr: peak learning rate (AdamW, weight decay 0.1 on matrices, cosine schedule). 1e-2
            is measured best of {3e-3, 1e-2} for both mixers here: attention solves
            ``L = 128, kv = 16`` in 5 epochs with it and stays on its loss plateau with 3e-3.
        seed: seeds the data, the initial parameters and the shuffling.
        device: torch device; None picks CUDA when available, else the CPU.
        threads: CPU threads of torch during the run (restored after); None keeps the current
            setting. One thread avoids oversubscription when other processes share the cores.
        quick: a smoke-test size that runs in seconds (the results mean little).
    """

    mixers: tuple[str, ...] = attrs.field(default=DEFAULT_MIXERS, converter=_tuple_of_names)
    seq_len: int = attrs.field(default=64, validator=check.positive_int)
    pairs: int = attrs.field(default=4, validator=check.positive_int)
    width: int = attrs.field(default=64, validator=check.positive_int)
    vocab_size: int = attrs.field(default=256, validator=check.positive_int)
    num_layers: int = attrs.field(default=2, validator=check.positive_int)
    epochs: int | None = attrs.field(default=None, validator=v.optional(check.positive_int))
    num_train: int | None = attrs.field(default=None, validator=v.optional(check.positive_int))
    num_test: int | None = attrs.field(default=None, validator=v.optional(check.positive_int))
    batch_size: int = attrs.field(default=128, validator=check.positive_int)
    lr: float = attrs.field(default=1e-2, converter=float, validator=check.positive)
    seed: int = attrs.field(default=0, validator=check.an_int)
    device: str | None = attrs.field(default=None)
    threads: int | None = attrs.field(default=None, validator=v.optional(check.positive_int))
    quick: bool = attrs.field(default=False, validator=v.instance_of(bool))

    def __attrs_post_init__(self) -> None:
        if not self.mixers:
            raise ValueError("DemoConfig.mixers: expected at least one mixer name, got none")
        if len(set(self.mixers)) != len(self.mixers):
            raise ValueError(f"DemoConfig.mixers: names must be distinct, got {self.mixers!r}")

    def task(self) -> MQARConfig:
        """The MQAR settings (raises ``ValueError`` for an impossible task)."""
        return MQARConfig(
            vocab_size=self.vocab_size,
            seq_len=self.seq_len,
            num_pairs=self.pairs,
            num_train=self.num_train or (1_000 if self.quick else 10_000),
            num_test=self.num_test or (200 if self.quick else 1_000),
            seed=self.seed,
        )

    def training(self) -> TrainConfig:
        """The optimisation settings."""
        return TrainConfig(
            epochs=self.epochs or (2 if self.quick else 10),
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=0.1,
            schedule="cosine",
            early_stop_acc=0.99,
            seed=self.seed,
        )


class DemoSettingsError(ValueError):
    """Settings of a demo run that cannot work, found before anything is written or trained."""


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"device: expected a torch device such as 'cpu' or 'cuda', got {name!r}"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} was asked for but CUDA is not available here")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device: {name!r} was asked for but this machine has {count} CUDA device"
                f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})"
            )
    return device


def _fmt_acc(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def format_table(results: list[dict[str, Any]]) -> str:
    """The comparison table: mixer, parameters, test accuracy, epochs, wall time, paper figure."""
    header = ("mixer", "params", "test acc", "epochs", "wall s", "paper (Zoology)")
    rows = [
        (
            r["mixer"],
            f"{r['parameters']:,}",
            f"{r['test_acc']:.3f}",
            str(r["epochs"]),
            f"{r['wall_s']:.1f}",
            _fmt_acc(r["reference_acc"]),
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def plot_accuracy(results: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Write a PNG of test accuracy per epoch, one line per mixer (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for r in results:
        epochs = [h["epoch"] for h in r["history"]]
        ax.plot(epochs, [h["test_acc"] for h in r["history"]], marker="o", label=r["mixer"])
        if r["reference_acc"] is not None:
            ax.axhline(
                r["reference_acc"], linestyle=":", linewidth=1, color=ax.lines[-1].get_color()
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (query positions)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_demo(
    cfg: DemoConfig,
    out: str | Path = "demo_out",
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one model per mixer on MQAR, print the table, and write the results into ``out``.

    Every setting is checked, and the data generated, before anything is written or trained: an
    impossible task (``4·kv > L``, a vocabulary too small, too few distinct sequences for
    disjoint splits), an unknown mixer or an unavailable device raises
    :class:`DemoSettingsError` (a ``ValueError``) and leaves ``out`` untouched.

    Returns:
        The content of ``results.json``.
    """
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        try:
            task, training = cfg.task(), cfg.training()
            check_mixer_names(cfg.mixers, where="mixers")
            device = _device(cfg.device)
            specs = {
                name: lm_spec(
                    name,
                    vocab_size=cfg.vocab_size,
                    width=cfg.width,
                    num_layers=cfg.num_layers,
                    seq_len=cfg.seq_len,
                )
                for name in cfg.mixers
            }
            data = make_mqar(task)
        except ValueError as err:
            raise DemoSettingsError(str(err)) from err
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        return _run(cfg, specs, data, training, device, out, progress, log, started)
    finally:
        torch.set_num_threads(threads)


def _run(
    cfg: DemoConfig,
    specs: dict[str, dict[str, Any]],
    data: MQARData,
    training: TrainConfig,
    device: torch.device,
    out: Path,
    progress: bool,
    log: Callable[[str], None],
    started: float,
) -> dict[str, Any]:
    task = data.config
    log(
        f"MQAR: V={task.vocab_size} L={task.seq_len} kv={task.num_pairs}, "
        f"{task.num_train} train / {task.num_test} test examples; width {cfg.width}, "
        f"{cfg.num_layers} layers, ≤{training.epochs} epochs, device {device}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    results = []
    for name, spec in specs.items():
        config_path = out / f"config_{name}.json"
        config_path.write_text(
            json.dumps(
                {
                    "model": json.loads(to_json(spec)),
                    "task": attrs.asdict(task),
                    "train": attrs.asdict(training),
                    "seed": cfg.seed,
                },
                indent=2,
            )
            + "\n"
        )
        model = build_lm(spec, seed=cfg.seed).to(device)
        run = fit(
            model,
            data,
            training,
            progress=progress,
            desc=f"{name:>10}",
            # Without a progress bar, one line per epoch shows that the run advances.
            on_epoch=None
            if progress
            else lambda r, name=name: log(
                f"{name}: epoch {r.epoch}  train loss {r.train_loss:.3f}  "
                f"test acc {r.test_acc:.3f}  ({r.seconds:.1f} s)"
            ),
        )
        results.append(
            {
                "mixer": name,
                "parameters": model.num_parameters(),
                "test_acc": run.test_acc,
                "epochs": run.epochs,
                "stopped_early": run.stopped_early,
                "wall_s": run.wall_s,
                "reference_acc": reference_accuracy(name, cfg.seq_len, cfg.pairs, cfg.width),
                "history": [attrs.asdict(h) for h in run.history],
                "config": config_path.name,
            }
        )
    summary = {
        "task": "MQAR",
        "settings": {**attrs.asdict(cfg), "device": str(device)},
        # The settings resolved (the defaults of ``quick`` or of a full run filled in).
        "task_config": attrs.asdict(task),
        "train_config": attrs.asdict(training),
        "results": results,
        "reference": "Zoology (Arora et al., 2023), fig. 2: MQAR accuracy of 2-layer models",
        "total_wall_s": time.perf_counter() - started,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = (
        f"MQAR V={task.vocab_size} L={task.seq_len} kv={task.num_pairs}, d={cfg.width}, "
        f"{cfg.num_layers} layers (dotted: Zoology)"
    )
    written = "results.json, config_*.json"
    try:
        plot_accuracy(results, out / "accuracy.png", title)
        written += ", accuracy.png"
    except ImportError:  # matplotlib is optional (extra "demo")
        log("matplotlib is not installed: no accuracy.png (pip install matplotlib)")
    log("")
    log(format_table(results))
    log(f"\nwrote {written} into {out}  ({summary['total_wall_s']:.0f} s)")
    sys.stdout.flush()
    return summary

"""Training loop for recall tasks: AdamW, a cosine or one-cycle schedule, early stopping.

The model is any ``nn.Module`` called as ``model(tokens, query_positions)`` that returns logits at
the query positions only (``[B, kv, V]``): the loss and the accuracy are computed there, and a
model that gathers its hidden states before the head never computes the ``V`` logits of the
other positions, which would dominate the cost on a CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor, nn

from subq import _validators as check
from subq.tasks.mqar import MQARData, MQARSplit

__all__ = ["EpochRecord", "TrainConfig", "TrainResult", "evaluate", "fit", "make_optimizer"]

SCHEDULES = ("cosine", "onecycle", "constant")


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: passes over the training set (fewer if ``early_stop_acc`` is reached).
        batch_size: training examples per step.
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay, applied to matrices only (tensors with two
            or more axes: embeddings and projections), never to norms' scales or biases.
        schedule: ``"cosine"`` (linear warm-up over ``warmup`` of the steps, then cosine decay
            to zero), ``"onecycle"`` (PyTorch's ``OneCycleLR`` with ``pct_start=warmup``) or
            ``"constant"``.
        warmup: fraction of the steps spent warming up.
        early_stop_acc: stop after the first epoch whose test accuracy reaches this; ``None``
            never stops early.
        grad_clip: clip the global gradient norm to this; ``None`` does not clip.
        eval_batch_size: examples per evaluation step.
        seed: seeds the shuffling generator.
    """

    epochs: int = attrs.field(default=10, validator=[v.instance_of(int), check.positive])
    batch_size: int = attrs.field(default=128, validator=[v.instance_of(int), check.positive])
    lr: float = attrs.field(default=1e-3, converter=float, validator=check.positive)
    weight_decay: float = attrs.field(default=0.1, converter=float, validator=v.ge(0.0))
    schedule: str = attrs.field(default="cosine", validator=v.in_(SCHEDULES))
    warmup: float = attrs.field(default=0.1, converter=float, validator=check.in_range(0, 1))
    early_stop_acc: float | None = attrs.field(
        default=0.99, validator=check.optional(check.in_range(0, 1))
    )
    grad_clip: float | None = attrs.field(default=1.0, validator=v.optional(check.positive))
    eval_batch_size: int = attrs.field(default=500, validator=[v.instance_of(int), check.positive])
    seed: int = attrs.field(default=0, validator=check.an_int)


@attrs.frozen
class EpochRecord:
    """What one epoch did (accuracy over query positions of the test split)."""

    epoch: int
    train_loss: float
    test_loss: float
    test_acc: float
    seconds: float


@attrs.frozen
class TrainResult:
    """History of a run; ``test_acc`` is the last epoch's test accuracy."""

    history: tuple[EpochRecord, ...]
    stopped_early: bool
    wall_s: float

    @property
    def test_acc(self) -> float:
        return self.history[-1].test_acc

    @property
    def epochs(self) -> int:
        return len(self.history)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices of ``model`` and none on vectors and scalars."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.98))


def _make_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=max(cfg.warmup, 1e-3)
        )
    warmup_steps = round(cfg.warmup * total_steps)

    def factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _query_loss(model: nn.Module, inputs: Tensor, positions: Tensor, targets: Tensor):
    logits = model(inputs, positions)
    # The loss is reduced in fp32 at least (bf16/fp16 logits are upcast; fp64 stays fp64).
    dtype = torch.promote_types(logits.dtype, torch.float32)
    loss = F.cross_entropy(logits.flatten(0, 1).to(dtype), targets.flatten())
    return loss, logits


@torch.no_grad()
def evaluate(model: nn.Module, split: MQARSplit, *, batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the query positions of ``split``.

    ``split`` must be on the model's device. The model is put in eval mode and restored.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, len(split), batch_size):
        sl = slice(start, start + batch_size)
        targets = split.targets[sl]
        loss, logits = _query_loss(model, split.inputs[sl], split.query_positions[sl], targets)
        total_loss += float(loss) * targets.numel()
        correct += int((logits.argmax(dim=-1) == targets).sum())
        count += targets.numel()
    model.train(was_training)
    return total_loss / count, correct / count


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional dependency (extra "demo")
        return None
    return tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True)


def fit(
    model: nn.Module,
    data: MQARData,
    cfg: TrainConfig,
    *,
    progress: bool = True,
    desc: str = "train",
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train`` and evaluate on ``data.test`` after every epoch.

    The model and data may live on any device; the data is moved to the device of the model's
    first parameter. Shuffling uses a ``torch.Generator`` seeded with ``cfg.seed``, so a run is
    repeatable given the same initial parameters (seed them with ``torch.manual_seed`` before
    building the model).

    Args:
        model: called as ``model(tokens, query_positions)``, returns logits ``[B, kv, V]``.
        data: the task's train and test splits.
        cfg: optimisation settings.
        progress: show a tqdm progress bar with the running loss and the last test accuracy
            (silently off when tqdm is not installed).
        desc: label of the progress bar.
        on_epoch: called with each epoch's record (e.g. to log it).
    """
    device = next(model.parameters()).device
    train, test = data.train.to(device), data.test.to(device)
    n = len(train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    optimizer = make_optimizer(model, cfg)
    scheduler = _make_schedule(optimizer, cfg, cfg.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    bar = _progress_bar(cfg.epochs * steps_per_epoch, desc, progress)
    history: list[EpochRecord] = []
    stopped_early = False
    start = time.perf_counter()
    model.train()
    try:
        for epoch in range(1, cfg.epochs + 1):
            epoch_start = time.perf_counter()
            order = torch.randperm(n, generator=generator).to(device)
            running = torch.zeros((), device=device)
            for step in range(steps_per_epoch):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                loss, _ = _query_loss(
                    model, train.inputs[idx], train.query_positions[idx], train.targets[idx]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                running += loss.detach()
                if bar is not None:
                    bar.update(1)
                    # Reading the loss synchronises a GPU: do it only every few steps.
                    if step % 20 == 0 or step == steps_per_epoch - 1:
                        bar.set_postfix(
                            epoch=epoch,
                            loss=f"{loss.detach().item():.3f}",
                            acc=f"{history[-1].test_acc:.3f}" if history else "-",
                        )
            test_loss, test_acc = evaluate(model, test, batch_size=cfg.eval_batch_size)
            record = EpochRecord(
                epoch=epoch,
                train_loss=float(running) / steps_per_epoch,
                test_loss=test_loss,
                test_acc=test_acc,
                seconds=time.perf_counter() - epoch_start,
            )
            history.append(record)
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{record.train_loss:.3f}", acc=f"{test_acc:.3f}")
            if on_epoch is not None:
                on_epoch(record)
            if cfg.early_stop_acc is not None and test_acc >= cfg.early_stop_acc:
                stopped_early = epoch < cfg.epochs
                break
    finally:
        if bar is not None:
            bar.close()
    return TrainResult(
        history=tuple(history), stopped_early=stopped_early, wall_s=time.perf_counter() - start
    )

"""Numerical comparisons and property assertions for sequence-mixing layers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from subq._pytree import params_to_flat

__all__ = [
    "assert_causal",
    "assert_close_rel",
    "assert_compiles",
    "assert_equivariant",
    "assert_grad_matches_autograd",
    "assert_init_stats",
    "assert_shell_matches_functional",
    "assert_vmap_matches_loop",
    "compute_relative_error",
]


def compute_relative_error(tensor1: Tensor, tensor2: Tensor) -> float:
    """Compute relative error between two tensors: ``‖t1 − t2‖_F / ‖t1‖_F`` in float32.

    ``tensor1`` is the reference. If ``‖t1‖ < 1e-10`` the absolute error ``‖t1 − t2‖`` is returned.

    Example:
        >>> compute_relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5]))
        0.1
    """
    if tensor1.shape != tensor2.shape:
        raise ValueError(
            f"compute_relative_error: shapes differ: tensor1 {tuple(tensor1.shape)}, "
            f"tensor2 {tuple(tensor2.shape)}"
        )
    t1 = tensor1.detach().float()
    diff = torch.linalg.vector_norm(t1 - tensor2.detach().float()).item()
    ref = torch.linalg.vector_norm(t1).item()
    return diff if ref < 1e-10 else diff / ref


def assert_close_rel(reference: Any, actual: Any, rtol: float, what: str = "output") -> None:
    """Every leaf of ``actual`` is within relative error ``rtol`` of ``reference``; no NaN."""
    ref_leaves, ref_spec = pytree.tree_flatten(reference)
    act_leaves, act_spec = pytree.tree_flatten(actual)
    if ref_spec != act_spec:
        raise AssertionError(f"{what}: structures differ:\n{ref_spec}\nvs\n{act_spec}")
    for i, (r, a) in enumerate(zip(ref_leaves, act_leaves)):
        if not torch.isfinite(a).all():
            raise AssertionError(f"{what}[leaf {i}]: non-finite values")
        err = compute_relative_error(r, a)
        if not err <= rtol:
            raise AssertionError(f"{what}[leaf {i}]: relative error {err:.3e} > {rtol:.1e}")


def assert_causal(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    time_axis: int = 1,
    atol: float = 1e-10,
    check_grad: bool = True,
) -> None:
    """Outputs at positions ≤ t do not depend on inputs at positions > t.

    Two checks: (1) perturbing the input after a cut point leaves earlier outputs unchanged; (2)
    the gradient of the output at position t with respect to inputs after t is zero (exactly,
    up to ``atol``). Use float64 inputs.
    """
    length = x.shape[time_axis]
    if length < 2:
        raise ValueError(f"assert_causal: need a time axis of length ≥ 2, got {length}")
    y = fn(x)
    generator = torch.Generator().manual_seed(0)
    for cut in sorted({1, length // 2, length - 1}):
        perturbed = x.clone()
        tail = perturbed.narrow(time_axis, cut, length - cut)
        tail.add_(torch.randn(tail.shape, generator=generator, dtype=x.dtype).to(x.device))
        y2 = fn(perturbed)
        before = y.narrow(time_axis, 0, cut)
        diff = (before - y2.narrow(time_axis, 0, cut)).abs().max().item()
        if diff > atol:
            raise AssertionError(
                f"not causal: perturbing positions ≥ {cut} changed outputs before {cut} by {diff:.3e}"
            )
    if check_grad:
        t = (length - 1) // 2  # leaves at least one later position, also for length 2
        xg = x.detach().clone().requires_grad_(True)
        out = fn(xg).narrow(time_axis, t, 1).sum()
        (grad,) = torch.autograd.grad(out, xg, allow_unused=True)
        if grad is not None:
            leak = grad.narrow(time_axis, t + 1, length - t - 1).abs().max().item()
            if leak > atol:
                raise AssertionError(
                    f"not causal: d out[{t}] / d x[>{t}] has magnitude {leak:.3e} (expected 0)"
                )


def assert_equivariant(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    transform: Callable[[Tensor], Tensor],
    *,
    output_transform: Callable[[Tensor], Tensor] | None = None,
    rtol: float = 1e-10,
) -> None:
    """``fn(transform(x)) == output_transform(fn(x))`` (``output_transform`` defaults to ``transform``)."""
    out_t = output_transform or transform
    expected = out_t(fn(x))
    got = fn(transform(x))
    err = compute_relative_error(expected, got)
    if not err <= rtol:
        raise AssertionError(f"not equivariant: relative error {err:.3e} > {rtol:.1e}")


def assert_init_stats(
    tensor: Tensor,
    *,
    mean: float = 0.0,
    std: float,
    bound: float | None = None,
    sigmas: float = 5.0,
) -> None:
    """Sample mean and std of ``tensor`` match the intended distribution.

    The tolerance is ``sigmas`` standard errors of each estimate (std of the mean is
    ``std/√n``; of the std, about ``std/√(2n)``), so larger tensors are held to tighter bounds.
    ``bound``, if given, is an absolute cut-off no element may exceed (truncation).
    """
    values = tensor.detach().double().flatten()
    n = values.numel()
    if n < 100:
        raise ValueError(f"assert_init_stats: need ≥ 100 elements for a meaningful test, got {n}")
    got_mean = values.mean().item()
    got_std = values.std().item()
    if abs(got_mean - mean) > sigmas * std / math.sqrt(n) + 1e-12:
        raise AssertionError(f"init mean {got_mean:.4g}, expected {mean:.4g} (n={n})")
    if abs(got_std - std) > sigmas * std / math.sqrt(2 * n) + 1e-12:
        raise AssertionError(f"init std {got_std:.4g}, expected {std:.4g} (n={n})")
    if bound is not None and values.abs().max().item() > bound:
        raise AssertionError(
            f"init max |x| {values.abs().max().item():.4g} exceeds bound {bound:.4g}"
        )


def assert_vmap_matches_loop(
    fn: Callable[..., Any],
    args: Sequence[Any],
    in_dims: Sequence[Any],
    *,
    rtol: float = 1e-10,
) -> None:
    """``torch.func.vmap(fn, in_dims)(*args)`` equals stacking ``fn`` over the mapped axis."""
    batched = torch.func.vmap(fn, in_dims=tuple(in_dims))(*args)
    sizes = {
        leaf.shape[d]
        for arg, d in zip(args, in_dims)
        if d is not None
        for leaf in pytree.tree_leaves(arg)
    }
    if len(sizes) != 1:
        raise ValueError(f"assert_vmap_matches_loop: mapped axes have different sizes {sizes}")
    (n,) = sizes
    outs = []
    for i in range(n):
        sliced = [
            arg if d is None else pytree.tree_map(lambda t, d=d, i=i: t.select(d, i), arg)
            for arg, d in zip(args, in_dims)
        ]
        outs.append(fn(*sliced))
    looped = pytree.tree_map(lambda *xs: torch.stack(xs), outs[0], *outs[1:])
    assert_close_rel(looped, batched, rtol, what="vmap vs loop")


def assert_grad_matches_autograd(
    loss: Callable[..., Tensor], params: Any, *args: Any, rtol: float = 1e-10
) -> None:
    """``torch.func.grad(loss)(params, *args)`` equals ``torch.autograd.grad`` on the leaves."""
    func_grads = torch.func.grad(loss)(params, *args)
    leaves, spec = pytree.tree_flatten(params)
    live = [leaf.detach().clone().requires_grad_(True) for leaf in leaves]
    value = loss(pytree.tree_unflatten(live, spec), *args)
    auto = torch.autograd.grad(value, live, allow_unused=True)
    auto = [torch.zeros_like(p) if g is None else g for p, g in zip(live, auto)]
    assert_close_rel(
        pytree.tree_unflatten(auto, spec), func_grads, rtol, what="func.grad vs autograd"
    )


def assert_shell_matches_functional(
    shell: nn.Module, fn: Callable[..., Any], *inputs: Any, rtol: float = 0.0, **options: Any
) -> None:
    """The shell's forward equals ``fn(shell.params(), *inputs, **options)``, and
    ``functional_call(shell, new_params)`` equals ``fn(new_params, ...)`` for perturbed params."""
    params = shell.params()
    assert_close_rel(
        fn(params, *inputs, **options), shell(*inputs), rtol, what="shell vs functional"
    )
    flat = params_to_flat(params)
    if set(flat) != set(dict(shell.named_parameters())):
        raise AssertionError(
            f"state_dict keys {sorted(dict(shell.named_parameters()))} != pytree keys {sorted(flat)}"
        )
    bumped = {k: v.detach() * 1.5 + 0.1 for k, v in flat.items()}
    via_call = torch.func.functional_call(shell, bumped, inputs)
    bumped_tree = pytree.tree_unflatten(list(bumped.values()), pytree.tree_structure(params))
    assert_close_rel(fn(bumped_tree, *inputs, **options), via_call, rtol, what="functional_call")


def assert_compiles(fn: Callable[..., Any], *args: Any, backend: str = "aot_eager", **kwargs: Any):
    """``torch.compile(fn, fullgraph=True)`` runs with zero graph breaks and matches eager.

    Returns the compiled output.
    """
    import torch._dynamo

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args, **kwargs)
    if explanation.graph_break_count != 0:
        raise AssertionError(
            f"{explanation.graph_break_count} graph break(s): {explanation.break_reasons}"
        )
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    out = compiled(*args, **kwargs)
    eager = fn(*args, **kwargs)
    assert_close_rel(eager, out, 1e-5, what="compiled vs eager")
    return out

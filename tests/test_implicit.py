"""Implicit kernels: grids, length policies, SIREN ω, frozen RFF buffers, masks, init statistics."""

from __future__ import annotations

import math

import pytest
import torch

from subq.functional.implicit import (
    KernelNetConfig,
    implicit_kernel,
    init_kernel_net,
    init_kernel_net_buffers,
    kernel_grid,
    kernel_mask,
    kernel_net,
)
from subq.nn.ckconv import CKConvND
from subq.testing import assert_close_rel, assert_init_stats

DT = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_grids_per_mode_and_policy():
    zero = kernel_grid([4], ["zero"], length_policy="resample")[..., 0]
    assert torch.equal(zero, torch.arange(-3, 4) / 3.0)
    causal = kernel_grid([4], ["causal"], length_policy="resample")[..., 0]
    assert torch.equal(causal, torch.arange(4) / 3.0)
    circ = kernel_grid([5], ["circular"], length_policy="resample")[..., 0]
    assert torch.equal(circ, (torch.arange(5) - 2) / 2.0)  # linspace(-1, 1, 5)
    circ_even = kernel_grid([4], ["circular"], length_policy="resample")[..., 0]
    assert circ_even[4 // 2] == 0  # the tap at offset 0 sits at p = 0 (fft_conv's centre)
    # extrapolate: the grid spacing is fixed by the construction size.
    longer = kernel_grid([9], ["causal"], construction_size=[5])[..., 0]
    assert torch.allclose(longer, torch.arange(9) / 4.0)
    assert longer.max() == 2.0  # beyond 1: extrapolated
    grid2 = kernel_grid([3, 4], ["zero", "circular"], length_policy="resample")
    assert grid2.shape == (5, 4, 2)


def test_extrapolate_gives_prefixes_and_resample_spans_the_grid():
    cfg = KernelNetConfig(channels=3, construction_size=16)
    p = init_kernel_net(cfg, generator=_g(0), dtype=DT)
    k16 = implicit_kernel(p, (16,), ("causal",), cfg=cfg)
    k7 = implicit_kernel(p, (7,), ("causal",), cfg=cfg)
    assert_close_rel(k16[:, :7], k7, 0.0)
    zero = implicit_kernel(p, (5,), ("zero",), cfg=cfg)
    assert zero.shape == (3, 9)
    res = KernelNetConfig(channels=3, length_policy="resample")
    pr = init_kernel_net(res, generator=_g(0), dtype=DT)
    a = implicit_kernel(pr, (9,), ("causal",), cfg=res)
    b = implicit_kernel(pr, (5,), ("causal",), cfg=res)
    assert_close_rel(a[:, ::2], b, 1e-14)  # resampling: the same curve on a coarser grid


def test_siren_hidden_omega_changes_the_function():
    base = KernelNetConfig(channels=2, kind="siren", mask="none", length_policy="resample")
    p = init_kernel_net(base, generator=_g(0), dtype=DT)
    coords = kernel_grid([9], ["zero"], length_policy="resample", dtype=DT)
    a = kernel_net(p, coords, cfg=base)
    other = KernelNetConfig(
        channels=2, kind="siren", mask="none", length_policy="resample", hidden_omega_0=3.0
    )
    b = kernel_net(p, coords, cfg=other)
    assert (a - b).abs().max() > 1e-3


def test_siren_init_statistics():
    cfg = KernelNetConfig(
        channels=64, kind="siren", hidden=256, num_layers=3, construction_size=8, mask="none"
    )
    p = init_kernel_net(cfg, generator=_g(0))
    first, hidden = p.layers[0].weight, p.layers[1].weight
    b0 = 1.0 / cfg.in_features
    b1 = math.sqrt(6 / 256) / cfg.hidden_omega_0
    # Uniform(±b) has std b/√3; the first layer has only 256 weights, still ≥ 100.
    assert_init_stats(first, std=b0 / math.sqrt(3), bound=b0)
    assert_init_stats(hidden, std=b1 / math.sqrt(3), bound=b1)


def test_hyena_filter_init_statistics():
    cfg = KernelNetConfig(channels=64, hidden=256, num_layers=3, construction_size=8)
    p = init_kernel_net(cfg, generator=_g(0))
    # nn.Linear's default: U(±1/√fan_in) for weights and biases; the output layer has no bias.
    for layer, fan_in in zip(p.layers, (cfg.in_features, 256, 256)):
        b = 1 / math.sqrt(fan_in)
        assert_init_stats(layer.weight, std=b / math.sqrt(3), bound=b)
    assert p.layers[1].bias is not None and p.layers[-1].bias is None
    assert torch.equal(p.sin_freq, torch.full((2, 256), cfg.omega_0))
    # Exponential mask rates spread linearly over the channels: m(p = 1) = exp(-rate).
    m = kernel_mask(p, torch.ones(1, 1), cfg=cfg)[0]
    rates = torch.linspace(*cfg.mask_init, 64)
    assert_close_rel(torch.exp(-rates), m, 1e-5)


def test_rff_frequencies_are_frozen_buffers():
    cfg = KernelNetConfig(channels=3, kind="rff", rff_features=8, construction_size=6)
    buffers = init_kernel_net_buffers(cfg, generator=_g(0))
    assert_init_stats(
        init_kernel_net_buffers(
            KernelNetConfig(channels=3, kind="rff", rff_features=4096, construction_size=6),
            generator=_g(1),
        ).rff_freqs,
        std=cfg.rff_sigma,
    )
    p = init_kernel_net(cfg, generator=_g(1))
    # The frequencies are a real input of the kernel (not dead), yet outside the params.
    k = implicit_kernel(p, (6,), ("causal",), cfg=cfg, buffers=buffers)
    moved = type(buffers)(rff_freqs=buffers.rff_freqs * 1.5)
    assert (k - implicit_kernel(p, (6,), ("causal",), cfg=cfg, buffers=moved)).abs().max() > 1e-3
    shell = CKConvND(
        hidden_dim=3, max_size=6, kernel=cfg, generator=_g(2)
    )  # buffers live outside the params
    names = dict(shell.named_parameters())
    assert not any("rff" in n for n in names)
    assert "rff_freqs" in dict(shell.named_buffers())
    assert not shell.rff_freqs.requires_grad
    before = shell.rff_freqs.clone()
    opt = torch.optim.AdamW(shell.parameters(), lr=0.1, weight_decay=0.5)
    shell(torch.randn(2, 6, 3, generator=_g(3))).square().sum().backward()
    opt.step()
    assert shell.rff_freqs.grad is None
    assert torch.equal(before, shell.rff_freqs)
    with pytest.raises(ValueError, match="needs buffers with rff_freqs"):
        implicit_kernel(p, (6,), ("causal",), cfg=cfg)


@pytest.mark.parametrize("mask", ["exponential", "gaussian"])
def test_masks_are_bounded_and_learnable(mask):
    bounds = (0.5, 4.0)
    cfg = KernelNetConfig(
        channels=3,
        ndim=2,
        mask=mask,
        mask_init=(1.0, 2.0),
        mask_bounds=bounds,
        construction_size=5,
        mask_shift=0.0,
    )
    p = init_kernel_net(cfg, generator=_g(0), dtype=DT)
    coords = kernel_grid([5, 5], ["zero", "zero"], construction_size=[5, 5], dtype=DT)
    m = kernel_mask(p, coords, cfg=cfg)
    centre = m[4, 4]
    assert torch.allclose(centre, torch.ones(3, dtype=DT))  # no decay at offset 0
    # Channel 0 has the smallest rate/width; at p = (1, 0): exp(-1) or exp(-1/2 · 1) etc.
    edge = m[8, 4]
    want = torch.exp(-torch.tensor([1.0, 1.5, 2.0], dtype=DT))
    if mask == "gaussian":
        want = torch.exp(-0.5 / torch.tensor([1.0, 1.5, 2.0], dtype=DT) ** 2)
    assert_close_rel(want, edge, 1e-12)
    # Pushed far, the parameter stays inside its bounds.
    p.mask_raw = p.mask_raw + 1e3
    far = kernel_mask(p, coords, cfg=cfg)[8, 4]
    limit = math.exp(-4.0) if mask == "exponential" else math.exp(-0.5 / 16)
    assert torch.allclose(far, torch.full((3,), limit, dtype=DT))
    g = torch.func.grad(
        lambda raw: kernel_mask(type(p)(p.layers, p.sin_freq, raw), coords, cfg=cfg).sum()
    )(p.mask_raw - 1e3)
    assert g.abs().sum() > 0


def test_hyena_filter_features_and_config_errors():
    cfg = KernelNetConfig(channels=4, bands=3, construction_size=8)
    assert cfg.in_features == 7
    with pytest.raises(ValueError, match="construction_size: required"):
        KernelNetConfig(channels=4)
    with pytest.raises(ValueError, match="mask_init"):
        KernelNetConfig(channels=4, construction_size=8, mask_init=(0.0, 50.0))
    with pytest.raises(ValueError, match="expected 2 positive sizes"):
        KernelNetConfig(channels=4, ndim=2, construction_size=(3, 4, 5))
    with pytest.raises(ValueError, match=r"expected 2 positive sizes \(ndim\), got \(4, 0\)"):
        KernelNetConfig(channels=4, ndim=2, construction_size=(4, 0))
    with pytest.raises(ValueError, match=r"mask_bounds: expected \(lo, hi\) with lo < hi"):
        KernelNetConfig(channels=4, construction_size=8, mask_bounds=(0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="kind"):
        KernelNetConfig(channels=4, kind="mlp", construction_size=8)
    p = init_kernel_net(cfg)
    with pytest.raises(ValueError, match="expected 1 sizes and modes"):
        implicit_kernel(p, (3, 3), ("zero", "zero"), cfg=cfg)

"""CKConvND: direct-convolution oracle, causality, circular equivariance, FiLM, mixer use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subq.functional.ckconv import CKConvConfig, ckconv, ckconv_flop_count, init_ckconv
from subq.functional.implicit import KernelNetConfig, implicit_kernel
from subq.lazy_config import LazyConfig
from subq.nn.ckconv import CKConvND
from subq.nn.mixer import QKVSequenceMixer
from subq.testing import (
    assert_causal,
    assert_close_rel,
    assert_compiles,
    assert_equivariant,
    assert_shell_matches_functional,
    compute_relative_error,
)

DT = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_zero_2d_matches_conv2d_and_causal_1d_is_causal():
    cfg = CKConvConfig(hidden_dim=3, ndim=2, max_size=(5, 4))
    p = init_ckconv(cfg, generator=_g(0), dtype=DT)
    x = torch.randn(2, 5, 4, 3, generator=_g(1), dtype=DT)
    kern = implicit_kernel(p.kernel, (5, 4), ("zero", "zero"), cfg=cfg.kernel)
    assert kern.shape == (3, 9, 7)  # the double grid
    xc = x.movedim(-1, 1)
    want = F.conv2d(xc, kern.flip(-1, -2).unsqueeze(1), padding="same", groups=3)
    want = (want + xc * p.skip.reshape(-1, 1, 1)).movedim(1, -1)
    assert_close_rel(want, ckconv(p, x, cfg=cfg), 1e-12)
    causal = CKConvConfig(hidden_dim=3, max_size=12)
    pc = init_ckconv(causal, generator=_g(2), dtype=DT)
    xs = torch.randn(2, 12, 3, generator=_g(3), dtype=DT)
    assert_causal(lambda t: ckconv(pc, t, cfg=causal), xs, atol=1e-12)


def test_circular_is_shift_equivariant_and_rff_kernel_works():
    kernel = KernelNetConfig(
        channels=3, ndim=2, kind="rff", rff_features=8, rff_sigma=2.0, length_policy="resample"
    )
    shell = CKConvND(hidden_dim=3, ndim=2, mode="circular", kernel=kernel, dtype=DT)
    x = torch.randn(2, 6, 5, 3, generator=_g(0), dtype=DT)
    assert_equivariant(
        lambda t: shell(t), x, lambda t: torch.roll(t, (2, 3), dims=(1, 2)), rtol=1e-12
    )
    assert_shell_matches_functional(
        shell, lambda p, t: ckconv(p, t, cfg=shell.cfg, buffers=shell.buffers_pytree()), x
    )


def test_film_conditioning_gives_per_sample_kernels():
    cfg = CKConvConfig(hidden_dim=3, max_size=8, cond_dim=2)
    p = init_ckconv(cfg, generator=_g(0), dtype=DT)
    x = torch.randn(2, 8, 3, generator=_g(1), dtype=DT).expand(2, 8, 3).clone()
    x[1] = x[0]
    cond = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    # Zero-initialised FiLM: starts as the unconditioned layer.
    assert_close_rel(ckconv(p, x, cfg=cfg), ckconv(p, x, cfg=cfg, conditioning=cond), 0.0)
    p.film.weight = torch.randn(p.film.weight.shape, generator=_g(2), dtype=DT)
    y = ckconv(p, x, cfg=cfg, conditioning=cond)
    assert (y[0] - y[1]).abs().max() > 1e-6  # same input, different conditioning
    # Sample 0 equals a batch of one with its own conditioning (kernels are per sample).
    assert_close_rel(y[:1], ckconv(p, x[:1], cfg=cfg, conditioning=cond[:1]), 1e-13)


def test_inner_mixer_and_compile_and_errors():
    block = QKVSequenceMixer(4, LazyConfig(CKConvND)(max_size=10), dtype=DT)
    x = torch.randn(2, 10, 4, generator=_g(0), dtype=DT)
    assert_causal(block, x, atol=1e-12)
    assert block.flop_count((10,)) == 8 * 10 * 16 + ckconv_flop_count(block.mixer.cfg, (10,))
    cfg = CKConvConfig(hidden_dim=4, ndim=2, max_size=6, mode=("zero", "circular"))
    p = init_ckconv(cfg, generator=_g(1))
    assert_compiles(lambda pp, t: ckconv(pp, t, cfg=cfg), p, torch.randn(2, 6, 6, 4))
    with pytest.raises(ValueError, match="'causal' needs exactly one spatial axis"):
        CKConvConfig(hidden_dim=4, ndim=2, mode=("causal", "zero"))
    with pytest.raises(ValueError, match="2 spatial axes"):
        ckconv(p, torch.randn(2, 6, 4), cfg=cfg)
    with pytest.raises(NotImplementedError, match="context parallelism"):
        block.mixer(x, x, x, object())


def test_bfloat16_autocast_with_float32_params():
    shell = CKConvND(hidden_dim=4, ndim=2, max_size=6, mode="circular")
    x = torch.randn(2, 6, 6, 4, generator=_g(0))
    y = shell(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = shell(x.bfloat16())
    assert y_auto.dtype == torch.bfloat16
    # The kernel is generated in float32 under autocast: only the bf16 input and output
    # roundings (2^-9 each) remain; measured ≤ 2.6e-3 over 15 seeds.
    assert compute_relative_error(y, y_auto) < 2 * 2**-9
    y_cast = shell.to(torch.bfloat16)(x.bfloat16())  # runs; SIREN params in bf16 are coarse
    assert y_cast.dtype == torch.bfloat16 and torch.isfinite(y_cast.float()).all()

"""Short depthwise convolution: nn.Conv oracle, causality, chunked decoding, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subq.functional.conv import (
    ShortConvConfig,
    ShortConvParams,
    init_short_conv,
    init_short_conv_state,
    short_conv,
    short_conv_decode,
)
from subq.nn.conv import ShortConv
from subq.testing import (
    assert_causal,
    assert_close_rel,
    assert_init_stats,
    assert_shell_matches_functional,
)

DT = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_causal_matches_nn_conv1d_with_left_padding(k):
    c = 5
    conv = nn.Conv1d(c, c, k, groups=c, padding=k - 1, bias=True, dtype=DT)
    p = ShortConvParams(weight=conv.weight.detach().squeeze(1), bias=conv.bias.detach())
    x = torch.randn(2, 9, c, generator=_g(0), dtype=DT)
    # nn.Conv1d pads both sides; the first L outputs are the causal ones.
    want = conv(x.transpose(1, 2))[..., :9].transpose(1, 2)
    assert_close_rel(want, short_conv(p, x), 1e-14)


@pytest.mark.parametrize(("nd", "k"), [(1, 3), (1, 4), (2, 3), (2, 2), (3, 3)])
def test_same_matches_nn_conv(nd, k):
    c = 3
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1](c, c, k, groups=c, padding="same", dtype=DT)
    p = ShortConvParams(weight=conv.weight.detach().squeeze(1), bias=conv.bias.detach())
    spatial = (7, 5, 4)[:nd]
    x = torch.randn(2, *spatial, c, generator=_g(0), dtype=DT)
    want = conv(x.movedim(-1, 1)).movedim(1, -1)
    assert_close_rel(want, short_conv(p, x, causal=False), 1e-14)


@pytest.mark.parametrize(
    ("spatial", "k", "wrap"),
    [
        ((7,), 3, True),
        ((7,), 4, True),
        ((6, 5), 3, True),
        ((6, 5), 2, (True, False)),
        ((4, 5, 3), 3, (False, True, True)),
    ],
)
def test_circular_same_matches_nn_conv_with_circular_padding_on_the_wrapped_axes(spatial, k, wrap):
    nd, c = len(spatial), 3
    p = ShortConvParams(
        weight=torch.randn(c, *(k,) * nd, generator=_g(1), dtype=DT),
        bias=torch.randn(c, generator=_g(2), dtype=DT),
    )
    x = torch.randn(2, *spatial, c, generator=_g(0), dtype=DT)
    flags = (wrap,) * nd if isinstance(wrap, bool) else wrap
    # Oracle: tile the input three times along each wrapped axis (zeros elsewhere), convolve
    # "same", keep the middle copy.
    xc = x.movedim(-1, 1)
    for axis, w in enumerate(flags):
        if w:
            xc = torch.cat([xc, xc, xc], dim=2 + axis)
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[
        nd - 1
    ]
    full = conv(xc, p.weight.unsqueeze(1), p.bias, padding="same", groups=c)
    for axis, (w, n) in enumerate(zip(flags, spatial, strict=True)):
        if w:
            full = full.narrow(2 + axis, n, n)
    assert_close_rel(full.movedim(1, -1), short_conv(p, x, causal=False, circular=wrap), 1e-14)
    # Shifts along the wrapped axes commute with the convolution.
    shifts = tuple(2 if w else 0 for w in flags)
    dims = tuple(a + 1 for a, w in enumerate(flags) if w)
    shifts = tuple(s for s in shifts if s)
    y = short_conv(p, x, causal=False, circular=wrap)
    y_of_rolled = short_conv(p, torch.roll(x, shifts, dims), causal=False, circular=wrap)
    assert_close_rel(torch.roll(y, shifts, dims), y_of_rolled, 1e-14)


def test_causal_and_decode_equals_full():
    cfg = ShortConvConfig(channels=4, kernel_size=4, bias=True)
    p = init_short_conv(cfg, generator=_g(0), dtype=DT)
    p.bias = torch.randn(4, generator=_g(1), dtype=DT)
    x = torch.randn(2, 11, 4, generator=_g(2), dtype=DT)
    assert_causal(lambda t: short_conv(p, t), x, atol=0.0)
    full = short_conv(p, x)
    for split in ([1] * 11, [3, 1, 7], [11]):
        state = init_short_conv_state(2, 4, 4, dtype=DT)
        outs, start = [], 0
        for n in split:
            y, state = short_conv_decode(p, x[:, start : start + n], state)
            outs.append(y)
            start += n
        assert_close_rel(full, torch.cat(outs, 1), 1e-14)
        assert_close_rel(x[:, -3:], state.tail, 0.0, what="state holds the last K-1 inputs")


def test_init_is_nn_conv_uniform_and_shell():
    cfg = ShortConvConfig(channels=3000, kernel_size=3)
    w = init_short_conv(cfg, generator=_g(0)).weight
    bound = 1 / 3**0.5
    assert_init_stats(w, std=bound / 3**0.5, bound=bound)
    shell = ShortConv(channels=4, kernel_size=3, bias=True, dtype=DT)
    x = torch.randn(2, 6, 4, generator=_g(1), dtype=DT)
    assert_shell_matches_functional(shell, lambda p, t: short_conv(p, t), x)


def test_errors():
    with pytest.raises(ValueError, match="causal=True needs ndim=1"):
        ShortConvConfig(channels=3, ndim=2)
    with pytest.raises(ValueError, match="kernel_size: expected a positive int"):
        ShortConvConfig(channels=3, kernel_size=0)
    p = init_short_conv(ShortConvConfig(channels=3))
    with pytest.raises(ValueError, match="1 spatial axes"):
        short_conv(p, torch.randn(2, 4, 4, 3))
    with pytest.raises(ValueError, match="3 channels"):
        short_conv(p, torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="K - 1 = 2"):
        short_conv_decode(p, torch.randn(2, 1, 3), init_short_conv_state(2, 3, 4))
    p2 = init_short_conv(ShortConvConfig(channels=3, ndim=2, causal=False))
    with pytest.raises(ValueError, match="causal=True needs one spatial axis"):
        short_conv(p2, torch.randn(1, 4, 4, 3), causal=True)

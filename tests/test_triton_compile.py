"""Every four-step Triton kernel compiles for Hopper (sm_90) on a machine without a GPU.

The interpreter tests run the kernels' arithmetic but not Triton's compiler, which rejects things
the interpreter accepts (a module-level int read inside a kernel, for one). This runs the
compiler's front end and lowering to PTX for the launch configurations subq uses.
"""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from subq.ops import _causal_fftconv_kernel as k1d  # noqa: E402
from subq.ops import _fourstep_gates_kernel as gates  # noqa: E402
from subq.ops import _same_fftconv2d_kernel as k2d  # noqa: E402


def _sig(pointers: dict[str, str], ints: list[str], constexprs: dict, floats=()) -> tuple:
    sig = {**{name: f"*{t}" for name, t in pointers.items()}, **dict.fromkeys(ints, "i32")}
    sig |= dict.fromkeys(floats, "fp32")
    return sig | dict.fromkeys(constexprs, "constexpr"), constexprs


CASES = {
    "twist, bf16 x and float32 kernel": (
        k1d._twist_dft_kernel,
        *_sig(
            {"X": "bf16", "K": "fp32", "SKIP": "fp32", "S": "fp32", "G": "fp32", "T": "fp32"},
            ["x_rows", "k_channels", "x_len", "k_len", "taps", "n2_size"],
            {"HAS_SKIP": True, "REV_X": False, "N1": 8, "BN": 512},
        ),
    ),
    "twist, bf16 gradient reversed and bf16 input (gradients)": (
        k1d._twist_dft_kernel,
        *_sig(
            {"X": "bf16", "K": "bf16", "SKIP": "fp32", "S": "fp32", "G": "fp32", "T": "fp32"},
            ["x_rows", "k_channels", "x_len", "k_len", "taps", "n2_size"],
            {"HAS_SKIP": False, "REV_X": True, "N1": 16, "BN": 1024},
        ),
    ),
    "product": (
        k1d._cmul_kernel,
        *_sig({"S": "fp32", "H": "fp32"}, ["reps", "per_h", "n_per_row"], {"BLOCK": 1024}),
    ),
    "product summed over the batch": (
        k1d._cmul_sum_kernel,
        *_sig({"S": "fp32", "H": "fp32"}, ["reps", "per_h", "n_per_row"], {"BLOCK": 1024}),
    ),
    **{
        f"untwist{', reversed' if rev else ''}": (
            k1d._untwist_idft_kernel,
            *_sig(
                {"C": "fp32", "Y": "bf16", "G": "fp32", "T": "fp32"},
                ["length", "n2_size"],
                {"REV": rev, "N1": 8, "BN": 512},
                floats=["scale"],
            ),
        )
        for rev in (False, True)
    },
    "2D fold, shifted": (
        k2d._fold_dft_kernel,
        *_sig(
            {"X": "bf16", "S": "fp32", "G": "fp32", "T": "fp32"},
            ["h_in", "w_in", "sh", "sw", "n2_size", "q"],
            {"SHIFTED": True, "N1": 8, "BQ": 128},
        ),
    ),
    "2D unfold with skip": (
        k2d._unfold_idft_kernel,
        *_sig(
            {"C": "fp32", "Y": "bf16", "X": "bf16", "SKIP": "fp32", "G": "fp32", "T": "fp32"},
            ["h_out", "w_out", "n2_size", "q", "channels"],
            {"HAS_SKIP": True, "N1": 8, "BQ": 64},
            floats=["scale"],
        ),
    ),
    # Triton makes a unit stride a constant: channels-last storage, channels-first storage.
    **{
        f"gate in, {name}": (
            gates._gate_in_kernel,
            *_sig(
                {"Q": "bf16", "K": "bf16", "Z": "fp32"},
                ["positions", "channels", "sqb", "skb", *strides],
                {"BS": gates.BS, "BC": gates.BC, **dict.fromkeys(units, 1)},
            ),
        )
        for name, units, strides in [
            ("channels last", ["sqc", "skc"], ["sqs", "sks"]),
            ("channels first", ["sqs", "sks"], ["sqc", "skc"]),
        ]
    },
    **{
        f"gate in backward, {name}": (
            gates._gate_in_bwd_kernel,
            *_sig(
                {"Q": "bf16", "K": "bf16", "DZ": "fp32", "DQ": "bf16", "DK": "bf16"},
                ["positions", "channels", "sqb", "skb", "sdb", *strides],
                {"BS": gates.BS, "BC": gates.BC, **dict.fromkeys(units, 1)},
            ),
        )
        for name, units, strides in [
            ("channels last", ["sqc", "skc", "sdc"], ["sqs", "sks", "sds"]),
            ("channels first", ["sqs", "sks", "sds"], ["sqc", "skc", "sdc"]),
        ]
    },
    **{
        f"gate out backward, {name}": (
            gates._gate_out_bwd_kernel,
            *_sig(
                {"H": "fp32", "V": "bf16", "DY": "bf16", "DH": "fp32", "DV": "bf16"},
                [
                    "positions",
                    "channels",
                    "svb",
                    "svs",
                    "svc",
                    "syb",
                    "sys",
                    "syc",
                    "sdb",
                    "sds",
                    "sdc",
                ],
                {"GATE": code, "BS": gates.BS, "BC": gates.BC},
            ),
        )
        for name, code in [("none", 0), *gates.GATES.items()]
    },
    **{
        f"gate out, {name}": (
            gates._gate_out_kernel,
            *_sig(
                {"H": "fp32", "V": "bf16", "Y": "bf16"},
                ["positions", "channels", "svb", "svs", "svc"],
                {"GATE": code, "BS": gates.BS, "BC": gates.BC},
            ),
        )
        for name, code in [("none", 0), *gates.GATES.items()]
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_compiles_for_sm90(case):
    fn, signature, constexprs = CASES[case]
    compiled = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs),
        target=GPUTarget("cuda", 90, 32),
    )
    assert ".entry" in compiled.asm["ptx"]

"""subq: sequence-mixing layers as pure functions over explicit parameter pytrees.

Every layer is a pure function ``x(params, inputs..., *, options)`` with an ``init_x(cfg, ...)``
and a thin ``nn.Module`` shell. ``import subq`` imports torch, attrs and jaxtyping only: optional
fast paths (quack, triton) and tools (matplotlib) are imported when first used.
"""

from subq._pytree import (
    in_dims_like,
    params_from_flat,
    params_to_flat,
    pytree_node,
    stack_params,
    unstack_params,
)
from subq.functional.norm import (
    LayerNormConfig,
    LayerNormParams,
    RMSNormConfig,
    RMSNormParams,
    apply_qk_norm,
    init_layer_norm,
    init_rms_norm,
    l2_norm,
    layer_norm,
    rms_norm,
)
from subq.init import (
    partial_wang_init_fn_with_num_layers,
    small_init,
    trunc_normal_init,
    trunc_normal_init_factory,
    wang_init,
)
from subq.lazy_config import PLACEHOLDER, LazyConfig, instantiate
from subq.nn.base import Shell
from subq.nn.norm import L2Norm, LayerNorm, RMSNorm
from subq.ops.capabilities import cuda_supports_quack
from subq.testing.assertions import compute_relative_error

__version__ = "0.1.0"

__all__ = [
    "PLACEHOLDER",
    "L2Norm",
    "LayerNorm",
    "LayerNormConfig",
    "LayerNormParams",
    "LazyConfig",
    "RMSNorm",
    "RMSNormConfig",
    "RMSNormParams",
    "Shell",
    "apply_qk_norm",
    "compute_relative_error",
    "cuda_supports_quack",
    "in_dims_like",
    "init_layer_norm",
    "init_rms_norm",
    "instantiate",
    "l2_norm",
    "layer_norm",
    "params_from_flat",
    "params_to_flat",
    "partial_wang_init_fn_with_num_layers",
    "pytree_node",
    "rms_norm",
    "small_init",
    "stack_params",
    "trunc_normal_init",
    "trunc_normal_init_factory",
    "unstack_params",
    "wang_init",
]

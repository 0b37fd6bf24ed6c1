"""CUDA's autocast dtype policy, emulated on the CPU.

CPU autocast keeps ``acos``, ``exp``, norms and sums in bf16, so code that mixes a bf16
matmul with an fp32 result passes on the CPU and fails on the GPU (``scatter(): Expected
self.dtype to be equal to src.dtype``), and the tensors it saves for backward have other
dtypes than on the GPU. While it is active, ``cuda_autocast`` registers kernels for the
AutocastCPU dispatch key that apply CUDA's policy instead, from the op lists of the
installed torch (``torch/include/ATen/autocast_mode.h``, torch 2.14). Being dispatcher
kernels, they also act inside composite ops (``F.normalize`` -> ``linalg_vector_norm``)
and autograd records their casts, as on the GPU. Ops that CPU autocast registers and CUDA
does not (e.g. ``cross_entropy_loss`` in fp32) keep CPU's kernel; on CUDA the same op
decomposes into ``log_softmax`` and ``nll_loss``, both fp32, so the result matches.

Used by the losses' tests, the full-size tests and the memory estimate
(``handreid.train.memory``), which counts what a CUDA step would save for backward.
"""

from __future__ import annotations

import contextlib
import functools

import torch

aten = torch.ops.aten

# AT_FORALL_LOWER_PRECISION_FP: inputs cast to the autocast dtype
LOWER_PRECISION = """
    _convolution.deprecated _convolution conv1d conv2d conv3d conv_tbc conv_transpose1d
    conv_transpose2d.input conv_transpose3d.input convolution prelu addmm addmv addr matmul
    einsum mm mv linalg_vecdot linear addbmm baddbmm bmm chain_matmul linalg_multi_dot
    _thnn_fused_lstm_cell _thnn_fused_gru_cell lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell
    _scaled_dot_product_flash_attention scaled_dot_product_attention
""".split()
# AT_FORALL_FP32: inputs cast to float32
FP32 = """
    acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan
    pow.Tensor_Scalar pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm
    rms_norm group_norm frobenius_norm.dim nuclear_norm nuclear_norm.dim cosine_similarity
    poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss kl_div
    l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss multilabel_margin_loss
    soft_margin_loss triplet_margin_loss multi_margin_loss binary_cross_entropy_with_logits
    dist pdist cdist renorm logsumexp upsample_nearest1d _upsample_nearest_exact1d
    upsample_nearest2d _upsample_nearest_exact2d upsample_nearest3d _upsample_nearest_exact3d
    upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa upsample_trilinear3d
    upsample_bicubic2d _upsample_bicubic2d_aa
""".split()
# AT_FORALL_FP32_SET_OPT_DTYPE: computed with dtype=float32 unless a dtype is given
FP32_OUTPUT = """
    prod prod.dim_int softmax.int log_softmax.int cumprod cumsum linalg_vector_norm
    linalg_matrix_norm linalg_matrix_norm.str_ord sum sum.dim_IntList
""".split()
# AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE: norm redispatched to its dtype overload
NORM_WITH_DTYPE = {
    "norm.Scalar": "norm.ScalarOpt_dtype",
    "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype",
}
# AT_FORALL_PROMOTE: inputs cast to the widest floating type among them
PROMOTE = """
    addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add
""".split()


def _overload(name: str):
    op, _, overload = name.partition(".")
    return getattr(getattr(aten, op), overload or "default")


def _eligible(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64


def _cast(x, dtype):
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(v, dtype) for v in x)
    return x.to(dtype) if _eligible(x) else x


def _below_autocast(op, args, kwargs):
    with torch.autocast("cpu", enabled=False):
        return op(*args, **kwargs)


def _casting(op, dtype_of):
    def kernel(*args, **kwargs):
        dtype = dtype_of(args)
        args, kwargs = _cast(args, dtype), {k: _cast(v, dtype) for k, v in kwargs.items()}
        return _below_autocast(op, args, kwargs)

    return kernel


def _float32_output(op):
    i = [a.name for a in op._schema.arguments].index("dtype")

    def kernel(*args, **kwargs):
        given = args[i] if i < len(args) else kwargs.get("dtype")
        if given is None and _eligible(args[0]):
            args, kwargs = args[:i], {**kwargs, "dtype": torch.float32}
        return _below_autocast(op, args, kwargs)

    return kernel


def _norm_with_dtype(op, target):
    def kernel(*args, **kwargs):
        if not _eligible(args[0]):
            return _below_autocast(op, args, kwargs)
        if len(args) == 3:  # ScalarOpt_dim without keepdim; the dtype overload needs it
            args = (*args, kwargs.pop("keepdim", False))
        return _below_autocast(target, args, {**kwargs, "dtype": torch.float32})

    return kernel


def _widest(args) -> torch.dtype:
    floats = [a.dtype for a in args if _eligible(a)]
    return functools.reduce(torch.promote_types, floats, torch.get_autocast_dtype("cpu"))


def _lower(args) -> torch.dtype:
    return torch.get_autocast_dtype("cpu")


def _float32(args) -> torch.dtype:
    return torch.float32


def _banned(*args, **kwargs):
    raise RuntimeError("binary_cross_entropy is unsafe to autocast (CUDA bans it)")


def _policy_kernels():
    """(op overload name, AutocastCPU kernel) for every entry of CUDA's lists."""
    for names, dtype_of in ((LOWER_PRECISION, _lower), (FP32, _float32), (PROMOTE, _widest)):
        for name in names:
            yield name, _casting(_overload(name), dtype_of)
    for name in FP32_OUTPUT:
        yield name, _float32_output(_overload(name))
    for name, target in NORM_WITH_DTYPE.items():
        yield name, _norm_with_dtype(_overload(name), _overload(target))
    yield "binary_cross_entropy", _banned


@contextlib.contextmanager
def cuda_autocast():
    """CPU bf16 autocast that follows CUDA's dtype policy while the block runs."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        for name, kernel in _policy_kernels():
            lib.impl(name, kernel, "AutocastCPU")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    finally:
        lib._destroy()

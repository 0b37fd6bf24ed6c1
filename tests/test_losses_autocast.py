"""The losses under CUDA's autocast dtype policy, emulated on the CPU.

CPU autocast keeps ``acos``, ``exp``, norms and sums in bf16, so loss code that mixes a
bf16 matmul with an fp32 result passes here and fails on the GPU (``scatter(): Expected
self.dtype to be equal to src.dtype``). While it is active, ``cuda_autocast`` registers
kernels for the AutocastCPU dispatch key that apply CUDA's policy instead, from the op lists
of the installed torch (``torch/include/ATen/autocast_mode.h``, torch 2.14). Being dispatcher
kernels, they also act inside composite ops (``F.normalize`` -> ``linalg_vector_norm``)
and autograd records their casts, as on the GPU. Ops that CPU autocast registers and
CUDA does not (e.g. ``cross_entropy_loss`` in fp32) keep CPU's kernel; on CUDA the same
op decomposes into ``log_softmax`` and ``nll_loss``, both fp32, so the result matches.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F

from handreid.losses import LOSSES, LossInputs, build_loss
from handreid.losses.functional import batch_hard_triplet

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


# ------------------------------------------------------------------ the emulation itself


def test_the_emulation_gives_cuda_dtypes_and_its_scatter_error():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    labels = torch.tensor([[0], [1], [2], [0]])
    with cuda_autocast():
        cos = F.linear(F.normalize(x, dim=-1), F.normalize(w, dim=-1))
        assert cos.dtype == torch.bfloat16  # matmuls in bf16
        assert F.normalize(cos, dim=-1).dtype == torch.float32  # norm in fp32, then promotion
        assert torch.acos(cos).dtype == cos.exp().dtype == cos.sum().dtype == torch.float32
        assert torch.cdist(cos, cos).dtype == cos.softmax(1).dtype == torch.float32
        with pytest.raises(RuntimeError, match="scatter"):
            cos.scatter(1, labels, torch.acos(cos.gather(1, labels)))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # plain CPU autocast: no error
        cos = F.linear(x, w)
        assert cos.scatter(1, labels, torch.acos(cos.gather(1, labels))).dtype == torch.bfloat16


# ------------------------------------------------------------------ every loss under it

DIM, CLASSES = 8, 4


def _inputs(dtype: torch.dtype, aligned: bool, head) -> LossInputs:
    """Features in ``dtype`` as the model gives them. ``aligned``: samples 0 and 1 (class 0)
    lie exactly on their class's ArcFace weight, classifier row, center and text feature
    (cos = 1, distances 0)."""
    torch.manual_seed(0)
    feat = torch.randn(8, DIM)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    text = F.normalize(torch.randn(CLASSES, DIM), dim=-1)
    if aligned:  # on an axis, so that cos is exactly 1 in any precision
        feat[0] = feat[1] = 2.0 * F.one_hot(torch.tensor(0), DIM)
        text[0] = F.normalize(feat[0], dim=-1)
        with torch.no_grad():
            for p in head.parameters():  # every head parameter is (CLASSES, DIM)
                p[0] = feat[0]
    feat = feat.to(dtype).requires_grad_()
    return LossInputs(feat, feat, F.normalize(feat, dim=-1), text[labels], labels)


@pytest.mark.parametrize("aligned", [False, True], ids=["random", "aligned"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_is_fp32_and_finite_under_cuda_autocast(name, dtype, aligned):
    head = build_loss(name, DIM, CLASSES)
    with cuda_autocast():
        x = _inputs(dtype, aligned, head)
        loss = head(x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert x.feat.grad is not None and bool(torch.isfinite(x.feat.grad).all()), "features"
    for pname, p in head.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname


# ------------------------------------------------------------------ triplet


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]], ids=["no-negative", "no-positive"])
def test_triplet_without_a_valid_triplet_is_zero_and_differentiable(labels):
    feats = torch.randn(4, DIM, requires_grad=True)
    loss = batch_hard_triplet(feats, torch.tensor(labels), 0.3)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_triplet_has_no_data_dependent_branch():
    """A Python branch on a tensor value is a GPU->CPU sync each step; a full graph has none."""
    feats, labels = torch.randn(8, DIM), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    compiled = torch.compile(batch_hard_triplet, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(feats, labels), batch_hard_triplet(feats, labels))

"""The losses under CUDA's autocast dtype policy, emulated on the CPU.

CPU autocast keeps ``acos``, ``exp``, norms and sums in bf16, so loss code that mixes a
bf16 matmul with an fp32 result passes here and fails on the GPU (``scatter(): Expected
self.dtype to be equal to src.dtype``). While it is active, ``cuda_autocast`` registers
kernels for the AutocastCPU dispatch key that apply CUDA's policy instead, from the op lists
of the installed torch (``torch/include/ATen/autocast_mode.h``, torch 2.14). Being dispatcher
kernels, they also act inside composite ops (``F.normalize`` -> ``linalg_vector_norm``)
and autograd records their casts, as on the GPU. Ops that CPU autocast registers and
CUDA does not (e.g. ``cross_entropy_loss`` in fp32) keep CPU's kernel; on CUDA the same
op decomposes into ``log_softmax`` and ``nll_loss``, both fp32, so the result matches. The
emulation itself lives in ``handreid.train.cuda_autocast`` (the memory estimate uses it too).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from handreid.losses import LOSSES, LossInputs, build_loss
from handreid.losses.functional import batch_hard_triplet
from handreid.train.cuda_autocast import cuda_autocast  # test_full_size imports it from here

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

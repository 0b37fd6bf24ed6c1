"""A run's GPU memory, estimated before it starts, without a GPU.

What a training step holds at its peak, part by part:

- ``weights``: every parameter and buffer of the model (both CLIP towers, the prompt
  context, the BNNeck) and of the loss heads, in fp32 as the trainer keeps them;
- ``gradients``: one fp32 gradient per trainable parameter (stage 2: the unfrozen blocks,
  the tower's head, the BNNeck and the loss heads);
- ``optimiser``: Adam(W)'s two moments per trainable parameter, plus the copy its
  multi-tensor step makes of one of them (``torch._foreach_sqrt``);
- ``activations``: the step's input batch and the tensors autograd saves for backward,
  counted with ``torch.autograd.graph.saved_tensors_hooks`` on the CPU under CUDA's
  autocast dtype policy (:mod:`handreid.train.cuda_autocast`): bf16 matmul inputs, fp32
  norms, as a GPU saves them, the bf16 copies of the weights included. The step runs on
  fake tensors (shapes and dtypes, no data), so the run's own batch is counted in about a
  second, without allocating it. Stage 1 runs the
  text tower over ``stage1_batch_size`` labels x templates with gradients to the context;
  stage 2 the image tower over ``batch_size`` images with the unfrozen depth's gradients.

The peak is the larger of the two stages. :meth:`MemoryEstimate.gpu_bytes` adds a margin
for what ``torch.cuda.max_memory_allocated`` does not see or this count leaves out (the
CUDA context, cuBLAS / cuDNN workspaces, the caching allocator's fragmentation, kernel
temporaries, the losses' O(batch x classes) tensors): the share of a GPU a trial needs.
``bench.memory_estimate`` checks the estimate against a measured peak.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch

log = logging.getLogger(__name__)

GiB = 1024**3
# training identities assumed when the split is not at hand (11k's aspects have 70-80): the
# context and the heads grow by about 1 MiB per 100 classes, nothing else depends on it
NUM_CLASSES = 100
MARGIN = 0.25  # x the peak: allocator fragmentation, kernel temporaries, the losses
CUDA_OVERHEAD = 1 * GiB  # per process: CUDA context, cuBLAS and cuDNN workspaces
PROBE_BATCHES = (2, 4)  # batches counted on the CPU (BatchNorm needs 2 samples to train)
TEMPLATE = "A photo of a {} hand."


@dataclass(frozen=True)
class MemoryInputs:
    """What a run's memory depends on (nothing else in the config changes it)."""

    backbone: str
    unfreeze_blocks: int = -1
    batch_size: int = 32
    stage1_batch_size: int = 64
    mixed_precision: str = "bf16"
    optimizer: str = "adamw"
    quick_gelu: bool | None = None  # None: the model config's own activation
    n_ctx: int = 4
    templates: int = 1
    num_classes: int = NUM_CLASSES

    @classmethod
    def from_config(cls, cfg, num_classes: int = NUM_CLASSES) -> MemoryInputs:
        m, t = cfg.model, cfg.train
        return cls(
            backbone=m.backbone,
            unfreeze_blocks=m.unfreeze_blocks,
            batch_size=t.batch_size,
            stage1_batch_size=t.stage1_batch_size,
            mixed_precision=t.mixed_precision,
            optimizer=cfg.optim.name,
            quick_gelu=_quick_gelu(m.activation, m.backbone, m.pretrained),
            n_ctx=m.n_ctx,
            templates=len(m.templates),
            num_classes=num_classes,
        )


def _quick_gelu(activation: str, backbone: str, pretrained: str) -> bool | None:
    """The activation the run's towers get (QuickGELU saves more for backward than GELU)."""
    from handreid.models.weights import is_checkpoint_path, tag_quick_gelu

    if activation != "auto":
        return activation == "quick_gelu"
    if pretrained not in ("none", "") and is_checkpoint_path(pretrained):
        return True  # a file: most likely OpenAI's (QuickGELU), the larger of the two
    return tag_quick_gelu(backbone, pretrained)


@dataclass(frozen=True)
class MemoryEstimate:
    """A run's memory, and the FLOPs of its steps (counted in the same pass, for the cost
    plan of a search: ``search.plan``)."""

    inputs: MemoryInputs
    weights: int
    gradients: int
    optimiser: int
    activations: int  # stage 2, at inputs.batch_size
    stage1_activations: int  # stage 1, at inputs.stage1_batch_size
    train_flops: int = 0  # one image through a stage-2 step, forward and backward
    eval_flops: int = 0  # one image's forward (validation, gallery, stage-1 features)
    stage1_flops: int = 0  # one label's prompts (all templates) through a stage-1 step

    @property
    def stage2(self) -> int:
        return self.weights + self.gradients + self.optimiser + self.activations

    @property
    def stage1(self) -> int:  # the context's gradient and moments are a few MiB at most
        return self.weights + self.stage1_activations

    @property
    def peak(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` should show for the run."""
        return max(self.stage1, self.stage2)

    def gpu_bytes(self, margin: float = MARGIN, overhead: int = CUDA_OVERHEAD) -> int:
        """The GPU memory to reserve for one run: the peak, a margin, the CUDA context."""
        return int(self.peak * (1 + margin)) + overhead

    def describe(self) -> str:
        parts = (
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimiser", self.optimiser),
            (f"activations at batch {self.inputs.batch_size}", self.activations),
        )
        said = " + ".join(f"{name} {size / GiB:.2f}" for name, size in parts)
        stage1 = f"stage 1 at batch {self.inputs.stage1_batch_size}: {self.stage1 / GiB:.2f} GiB"
        return f"stage 2: {said} = {self.stage2 / GiB:.2f} GiB; {stage1}"


_estimates: dict[MemoryInputs, MemoryEstimate] = {}  # this process's, by inputs


def estimate(inputs: MemoryInputs) -> MemoryEstimate:
    """The memory of one run (builds the model with random weights on the CPU)."""
    return estimate_many([inputs])[inputs]


def estimate_many(items: Iterable[MemoryInputs]) -> dict[MemoryInputs, MemoryEstimate]:
    """Estimates for several runs, building each distinct model once (about a second per
    run and a few per model for ViT-B-16); kept for the life of the process."""
    todo = [i for i in dict.fromkeys(items) if i not in _estimates]
    for key in sorted({_model_key(i) for i in todo}, key=str):
        model, heads = _build(key)
        stage1: dict = {}
        for inputs in (i for i in todo if _model_key(i) == key):
            _estimates[inputs] = _estimate(model, heads, inputs, stage1)
        del model, heads
    return {i: _estimates[i] for i in items}


def _model_key(inputs: MemoryInputs) -> MemoryInputs:
    """The fields the built model depends on (the rest only change what a step does)."""
    return replace(
        inputs,
        unfreeze_blocks=-1,
        batch_size=0,
        stage1_batch_size=0,
        mixed_precision="",
        optimizer="",
    )


def _build(key: MemoryInputs):
    from handreid.config import LossConfig
    from handreid.losses import build_loss_set
    from handreid.models.model import build_model

    activation = {None: "auto", True: "quick_gelu", False: "gelu"}[key.quick_gelu]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(
            key.backbone,
            key.num_classes,
            n_ctx=key.n_ctx,
            templates=(TEMPLATE,) * key.templates,
            activation=activation,
        )
        heads = build_loss_set(LossConfig(), model.embed_dim, key.num_classes)
    return model, heads


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _estimate(model, heads, inputs: MemoryInputs, stage1: dict) -> MemoryEstimate:
    weights = tensor_bytes([*model.parameters(), *model.buffers(), *heads.parameters()])
    exclude = {_storage_id(t) for t in [*model.parameters(), *model.buffers()]}
    size = model.preprocess["size"]
    mp = inputs.mixed_precision
    # the excluded images stay alive until the estimate ends: a storage's id is its address,
    # which a later step's saved tensor (real or fake) could otherwise reuse and lose
    held: list[torch.Tensor] = []

    def stage2_step(batch: int) -> torch.Tensor:
        images = torch.randn(batch, 3, *size)  # counted once, saved or not (see count)
        exclude.add(_storage_id(images))
        held.append(images)
        return _stand_in_loss(model.encode_image(images))

    def stage1_step(batch: int) -> torch.Tensor:
        return model.encode_text(torch.arange(batch) % inputs.num_classes).float().square().sum()

    model.set_stage(2, 0)
    model.eval()
    _, eval_flops = count(stage2_step, inputs.batch_size, mp, exclude, backward=False)
    model.set_stage(2, inputs.unfreeze_blocks)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
    grads = tensor_bytes(trainable)  # fp32 parameters, fp32 gradients
    moments = 2 * grads if inputs.optimizer in ("adam", "adamw") else 0
    step_copy = grads if moments else 0  # _foreach_sqrt(exp_avg_sq) in the multi-tensor step
    activations, train_flops = count(stage2_step, inputs.batch_size, mp, exclude, backward=True)
    activations += inputs.batch_size * 3 * size[0] * size[1] * 4  # the batch itself, fp32
    key = (inputs.stage1_batch_size, mp)  # stage 1 does not depend on the unfrozen depth
    if key not in stage1:
        model.set_stage(1)
        saved, forward = count(stage1_step, inputs.stage1_batch_size, mp, exclude, backward=False)
        # backward: the gradient of every layer's input down to the context (the text
        # tower's weights are frozen), about the forward's FLOPs again
        stage1[key] = (saved, 2 * forward)
    model.requires_grad_(False)
    return MemoryEstimate(
        inputs,
        weights=weights,
        gradients=grads,
        optimiser=moments + step_copy,
        activations=activations,
        stage1_activations=stage1[key][0],
        train_flops=train_flops,
        eval_flops=eval_flops,
        stage1_flops=stage1[key][1],
    )


def _stand_in_loss(out) -> torch.Tensor:
    """A scalar of both features, as the losses use them (their own saved tensors are
    O(batch x classes): left to the margin)."""
    return out.feat.float().square().sum() + out.bn_feat.float().square().sum()


def count(
    step: Callable[[int], torch.Tensor],
    batch: int,
    mixed_precision: str,
    exclude=(),
    *,
    backward: bool,
) -> tuple[int, int]:
    """What ``step(batch)`` saves for backward (bytes) and its FLOPs per sample (forward, and
    backward when asked). Run on fake tensors (shapes and dtypes, no compute) where this
    torch has them; else computed at the probe batches and extended linearly."""
    if shapes_only() is not None:
        saved, flops = _count_once(lambda: step(batch), mixed_precision, exclude, backward, True)
        return saved, flops // batch
    small, large = PROBE_BATCHES
    at_small, _ = _count_once(lambda: step(small), mixed_precision, exclude, False, False)
    at_large, flops = _count_once(lambda: step(large), mixed_precision, exclude, backward, False)
    per_sample = max(0.0, (at_large - at_small) / (large - small))
    fixed = max(0.0, at_small - small * per_sample)
    return int(round(fixed + batch * per_sample)), flops // large


def _count_once(step, mixed_precision: str, exclude, backward: bool, fake: bool):
    """(bytes of the distinct storages autograd saves while ``step`` runs, FLOPs of the
    step), under CUDA's autocast policy for ``bf16``; storages in ``exclude`` (the weights)
    are not counted. ``fake``: tensors made inside ``step`` are fake (no data, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    from handreid.train.cuda_autocast import cuda_autocast

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_id(t)
        if key not in exclude:
            seen[key] = t.untyped_storage().nbytes()
        return t

    flops = FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops())
    with contextlib.ExitStack() as stack:
        if fake:
            stack.enter_context(shapes_only())
        stack.enter_context(flops)
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        with cuda_autocast() if mixed_precision == "bf16" else contextlib.nullcontext():
            loss = step()
        saved = sum(seen.values())
        if backward:
            loss.backward()
    del loss
    return saved, flops.get_total_flops()


def _cpu_attention_flops() -> dict:
    """The CPU's attention kernels, which the FLOP counter has no formula for, counted as
    the GPU's (``bench.gpu_throughput`` does the same)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    out = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", backward),
    ):
        op = getattr(aten, name, None)
        if op is not None:
            out[op] = formula
    return out


# ------------------------------------------------------------------ the seam into torch


def shapes_only():
    """A fresh ``FakeTensorMode`` (``torch._subclasses``, private: torch.compile's tracer),
    in which ops compute shapes and dtypes only; weights made outside it are read as fake
    ones. None where the installed torch lacks it (the estimate then computes)."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode

        return FakeTensorMode(allow_non_fake_inputs=True)
    except (ImportError, TypeError) as err:
        log.warning(
            "torch %s: no FakeTensorMode(allow_non_fake_inputs=True) (%s); the memory "
            "estimate computes on the CPU at batches %s instead",
            torch.__version__,
            err,
            PROBE_BATCHES,
        )
        return None


def _storage_id(t: torch.Tensor) -> int:
    """One number per storage, real or fake (a fake storage has no data pointer)."""
    return t.untyped_storage()._cdata

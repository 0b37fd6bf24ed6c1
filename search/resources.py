"""A trial's share of a GPU, sized by the memory its configuration needs.

With ``tune.resources.gpus: auto`` (or ``--gpus-per-trial auto``) each trial asks Ray for
``1 / k`` of a GPU, where ``k`` runs of its configuration fit in the memory of the
cluster's smallest GPU by ``handreid.train.memory``'s estimate (its peak, plus a margin
and the CUDA context). The estimate depends on a few config keys only (``MemoryInputs``:
backbone, unfrozen depth, batch sizes, precision, ...): every combination of those the
space can draw is estimated once, in the driver, before any trial starts, and a
configuration that does not fit on one GPU is refused there. Tune asks ``GpuShares`` (a
function of the trial's config) for each trial's resources.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from handreid.errors import HandReIDError
from search.space import SearchSpace

if TYPE_CHECKING:  # the estimate imports torch: only when a share is asked for
    from handreid.train.memory import MemoryEstimate, MemoryInputs

log = logging.getLogger(__name__)

AUTO = "auto"
GiB = 1024**3
# the config keys MemoryInputs reads: the searched ones among them are enumerated
MEMORY_KEYS = (
    "model.backbone",
    "model.pretrained",
    "model.activation",
    "model.unfreeze_blocks",
    "model.n_ctx",
    "model.templates",
    "train.batch_size",
    "train.stage1_batch_size",
    "train.mixed_precision",
    "optim.name",
)
MAX_COMBINATIONS = 256
PROBE_TIMEOUT_S = 120


def memory_params(space: SearchSpace) -> list[dict[str, Any]]:
    """Trial parameters (Optuna names) for every combination of the searched memory keys
    the space can draw, each branch under its own conditions; other keys keep the base."""
    combos: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {})]  # (by key, by name)
    for param in space.params:
        if param.key not in MEMORY_KEYS:
            continue
        grown = []
        for values, names in combos:
            branch = param.branch_for(values)
            if branch is None:
                grown.append((values, names))
                continue
            for value in branch_values(branch):
                grown.append(({**values, param.key: value}, {**names, branch.name: value}))
        combos = grown
        if len(combos) > MAX_COMBINATIONS:
            raise HandReIDError(
                f"{space.source}: more than {MAX_COMBINATIONS} combinations of "
                f"{', '.join(MEMORY_KEYS)} to estimate the memory of; give "
                "--gpus-per-trial a number"
            )
    return [names for _, names in combos]


def branch_values(branch) -> list[Any]:
    if branch.type == "categorical":
        return list(branch.choices)
    if branch.type == "bool":
        return [False, True]
    if branch.type == "int":
        step = int(branch.step or 1)
        return list(range(int(branch.low), int(branch.high) + 1, step))
    return [branch.low, branch.high]  # a float key of memory: its ends


def space_estimates(
    space: SearchSpace, extra: dict[str, Any] | None = None
) -> dict[MemoryInputs, MemoryEstimate]:
    """The estimate of every memory configuration the space's trials can have."""
    from handreid.train.memory import MemoryInputs, estimate_many

    inputs = [
        MemoryInputs.from_config(space.trial_config(params, extra))
        for params in memory_params(space)
    ]
    return estimate_many(inputs)


def per_gpu(estimate: MemoryEstimate, gpu_bytes: int) -> int:
    """How many runs of the estimate's configuration fit on one GPU."""
    return int(gpu_bytes // estimate.gpu_bytes())


def share(runs_per_gpu: int) -> float:
    """Ray's GPU request for one of ``runs_per_gpu`` runs: 1/k, rounded down to Ray's
    resolution (1e-4) so that k of them fit."""
    return math.floor(10_000 / runs_per_gpu) / 10_000


@dataclass
class GpuShares:
    """Tune's resources of a trial, from its config: ``cpus`` CPUs and the share of a GPU
    that its configuration's memory needs (``shares``, by ``MemoryInputs``). Also takes a
    confirmation run's config (its ``params``)."""

    space: SearchSpace
    cpus: float
    shares: dict[MemoryInputs, float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def largest(self) -> float:
        return max(self.shares.values())

    def gpus(self, config: dict[str, Any]) -> float:
        from handreid.train.memory import MemoryInputs

        params = config["params"] if "params" in config and "config_id" in config else config
        try:
            key = MemoryInputs.from_config(self.space.trial_config(params, self.extra))
        except Exception:  # an unreadable config: the trial says why when it starts
            return self.largest
        return self.shares.get(key, self.largest)

    def __call__(self, config: dict[str, Any]):
        from ray.tune import PlacementGroupFactory

        return PlacementGroupFactory([{"CPU": self.cpus, "GPU": self.gpus(config)}])


def gpu_shares(
    space: SearchSpace, cpus: float, gpu_bytes: int, extra: dict[str, Any] | None = None
) -> GpuShares:
    """Each memory configuration's share of a GPU of ``gpu_bytes``; refuses, in one line,
    a configuration that does not fit on one."""
    shares = {}
    for inputs, est in space_estimates(space, extra).items():
        k = per_gpu(est, gpu_bytes)
        if k < 1:
            raise HandReIDError(
                f"{space.source}: {describe(inputs)} needs {est.gpu_bytes() / GiB:.1f} GiB "
                f"of GPU memory ({est.describe()}, plus margin), more than a GPU's "
                f"{gpu_bytes / GiB:.1f} GiB; lower train.batch_size or the unfrozen depth"
            )
        shares[inputs] = share(k)
        log.info("%s: %d per GPU (%s)", describe(inputs), k, est.describe())
    return GpuShares(space, cpus, shares, dict(extra or {}))


def describe(inputs: MemoryInputs) -> str:
    depth = "all" if inputs.unfreeze_blocks == -1 else inputs.unfreeze_blocks
    return f"{inputs.backbone} (unfreeze {depth}, batch {inputs.batch_size})"


def asked(space: SearchSpace, opts) -> float | str:
    """The GPUs per trial asked for: ``--gpus-per-trial``, else the space's (or ``auto``)."""
    return opts.gpus_per_trial if opts.gpus_per_trial is not None else space.tune.gpus_per_trial


# ------------------------------------------------------------------ the GPUs' memory

_probed: int | None = None


def gpu_memory(given_gib: float | None) -> int:
    """The memory of the cluster's smallest GPU in bytes: ``given_gib`` (``--gpu-memory``),
    else asked of one GPU of each node that has GPUs, by a Ray task (once per process)."""
    global _probed
    if given_gib is not None:
        return int(given_gib * GiB)
    if _probed is None:
        _probed = probe_gpu_memory()
    return _probed


def probe_gpu_memory() -> int:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU", 0) > 0]
    if not nodes:
        raise HandReIDError(
            "--gpus-per-trial auto: the cluster has no GPUs; pass --gpus-per-trial 0 to "
            "train on CPUs"
        )
    task = ray.remote(num_cpus=0, num_gpus=0.0001)(_device_memory)
    refs = [
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote()
        for n in nodes
    ]
    try:
        found = ray.get(refs, timeout=PROBE_TIMEOUT_S)
    except Exception as err:
        raise HandReIDError(
            f"--gpus-per-trial auto: could not read the GPUs' memory ({type(err).__name__}); "
            "pass --gpu-memory GIB"
        ) from None
    if not all(found):
        raise HandReIDError(
            "--gpus-per-trial auto: a GPU node's torch sees no GPU; pass --gpu-memory GIB"
        )
    return min(found)


def _device_memory() -> int:
    import torch

    if not torch.cuda.is_available():
        return 0
    return torch.cuda.get_device_properties(0).total_memory

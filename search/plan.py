"""``handreid-search --plan``: what a search will cost, before anything starts.

For a space and a cluster (``--gpus N``, else the GPUs this machine sees) the plan gives:

- the trials, and the expected training epochs of the search under its ASHA schedule
  (every trial to the first rung, then on with the chance that its result passes the
  rung's cutoff, and ``promote_top``, among those recorded before it, in random order:
  ``pass_probability``; each backbone's trials among themselves; Hyperband brackets
  split evenly), of the confirmation (``tune.confirm.top_k`` configurations per
  backbone x ``seeds`` full-length runs) and of the scoring (``score_seeds`` full-length
  runs per backbone winner), plus the stage-1 runs (one per backbone and training seed:
  the cache shares it). Early stopping (``train.patience``) is not counted: an upper bound.
- each memory configuration's estimate (``handreid.train.memory``) and how many trials of
  it fit on a GPU (what ``--gpus-per-trial auto`` asks Ray for);
- the FLOPs of all that (counted by the estimate: a stage-2 step per image at its
  unfrozen depth, validation and gallery forwards per epoch, stage 1 per label), and from
  a stated throughput a wall time and GPU-hours: each phase takes the longest of (its
  FLOPs at the GPUs' packed throughput, its runs at one trial's own pace over the trials
  running at once, its longest run).

The throughput figures are assumptions, printed as such, until a GPU measures them
(``bench/gpu_check.sh``: ``bench.gpu_throughput`` and ``bench.memory_estimate``); the
flags ``--gpu-tflops``, ``--trial-tflops`` replace them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handreid.errors import HandReIDError
from search import resources
from search.space import SearchSpace

GiB = 1024**3
# H100 SXM dense bf16 peak (bench.gpu_throughput.PEAK_BF16_TFLOPS) x an assumed utilisation
PEAK_TFLOPS = 989.0
PACKED_MFU = 0.35  # a GPU busy with several trials' kernels
TRIAL_MFU = 0.20  # one trial's batch-32 kernels with the GPU to itself
EPOCH_OVERHEAD_S = 2.0  # per epoch, off the GPU: loaders not hidden, checkpoint write
RUN_START_S = 30.0  # per run: actor, model build and weights, data loaders
DEFAULT_GPU_GIB = 80.0  # --plan --gpus N without --gpu-memory: an H100 (said so)

# train / val / test images of 11k's standard split (accessories filtered), from its
# HandInfo.csv (tests/data): used when the data is not on this machine
STANDARD_SIZES = {
    "dorsal_r": (890, 72, 1042),
    "dorsal_l": (735, 73, 1061),
    "palmar_r": (905, 72, 988),
    "palmar_l": (928, 76, 1023),
}


@dataclass(frozen=True)
class Throughput:
    gpu_tflops: float  # achieved by one GPU busy with packed trials
    trial_tflops: float  # achieved by one trial with the GPU to itself
    epoch_overhead_s: float = EPOCH_OVERHEAD_S
    run_start_s: float = RUN_START_S
    given: bool = False  # from the command line rather than assumed

    def describe(self) -> str:
        what = (
            "given"
            if self.given
            else (
                f"ASSUMED, not measured: H100 SXM dense bf16 peak {PEAK_TFLOPS:g} TFLOP/s x "
                f"{PACKED_MFU:g} packed / x {TRIAL_MFU:g} for one trial; measure with "
                "bench/gpu_check.sh and pass --gpu-tflops / --trial-tflops"
            )
        )
        return (
            f"throughput ({what}): a GPU {self.gpu_tflops:.0f} TFLOP/s with trials packed, "
            f"one trial alone {self.trial_tflops:.0f} TFLOP/s; plus {self.epoch_overhead_s:g} s "
            f"per epoch and {self.run_start_s:g} s per run off the GPU (assumed)"
        )


def default_throughput(gpu_tflops: float | None, trial_tflops: float | None) -> Throughput:
    given = gpu_tflops is not None or trial_tflops is not None
    return Throughput(
        gpu_tflops or PEAK_TFLOPS * PACKED_MFU,
        trial_tflops or min(PEAK_TFLOPS * TRIAL_MFU, gpu_tflops or math.inf),
        given=given,
    )


# ------------------------------------------------------------------ epochs


def pass_probability(k: float, reduction_factor: int, top: int | None) -> float:
    """The chance that the ``k``-th result recorded at a rung passes it, the results' order
    being random: at least Ray's cutoff, the (1 - 1/rf) percentile of those recorded
    before (none before: it passes), and with ``top`` among the ``top`` best so far."""
    if k <= 1:
        return 1.0
    before = k - 1
    position = (1 - 1 / reduction_factor) * max(before - 1, 0.0)  # numpy's linear percentile
    p = (before - position) / (before + 1)
    return min(p, top / k) if top is not None and k > top else p


def _group(trials: float, rungs: list[int], space: SearchSpace) -> tuple[float, float]:
    """(expected epochs, expected complete trials) of ``trials`` judged at ``rungs`` among
    themselves, one after another."""
    t = space.tune
    seen = [0.0] * len(rungs)  # expected results recorded at each rung so far
    epochs = complete = 0.0
    for i in range(math.ceil(trials)):
        weight = min(1.0, trials - i)
        alive, last, run = 1.0, 0, 0.0
        for j, rung in enumerate(rungs):
            run += alive * (rung - last)
            last = rung
            seen[j] += alive
            alive *= pass_probability(seen[j], t.reduction_factor, t.promote_top)
        epochs += weight * (run + alive * (space.max_epochs - last))
        complete += weight * alive
    return epochs, complete


def search_counts(space: SearchSpace, num_samples: int | None = None) -> tuple[float, float]:
    """(expected epochs, expected complete trials per backbone) of the whole search: each
    backbone's trials (``bracket_by``) judged among themselves, split evenly over the
    Hyperband brackets (bracket s starts at the s-th rung)."""
    t = space.tune
    trials = num_samples or t.num_samples
    group = space.group_key() if space.bracket_key() else None
    groups = len(group[1]) if group else 1
    rungs = t.milestones(space.max_epochs)
    brackets = [rungs[s:] for s in range(max(1, t.brackets))] if rungs else [[]]
    epochs = complete = 0.0
    for bracket in brackets:
        e, c = _group(trials / groups / len(brackets), bracket, space)
        epochs += groups * e
        complete += c
    return epochs, complete


def expected_search_epochs(space: SearchSpace, num_samples: int | None = None) -> float:
    """Expected training epochs of the search (``bench.confirm_regret`` uses it)."""
    return search_counts(space, num_samples)[0]


# ------------------------------------------------------------------ data


def data_sizes(cfg) -> tuple[int, int, int, str]:
    """(train, val, test) images of the run's split, and where the figures come from."""
    from handreid.data.hands11k import CSV_NAME

    data = cfg.data
    root = data.prepared or data.root
    if root and (Path(root) / CSV_NAME).is_file():
        from handreid.data.hands11k import aspect_records, read_handinfo
        from handreid.data.splits import make_split

        records = aspect_records(
            read_handinfo(Path(root) / CSV_NAME),
            data.aspect,
            filter_accessories=data.filter_accessories,
        )
        split = make_split(
            records,
            method=data.split,
            test_fraction=data.test_fraction,
            seed=data.split_seed,
            n_splits=cfg.eval.n_splits,
            split_seed=cfg.eval.split_seed,
        )
        return len(split.train), len(split.val), len(split.test.images), f"{root}'s metadata"
    if root:
        train, val, test = STANDARD_SIZES[data.aspect]
        where = f"11k's standard {data.aspect} split; {root} is not on this machine"
        return train, val, test, where
    s = data.synth
    test_ids = max(2, round(s.ids * data.test_fraction))
    train_ids = s.ids - test_ids
    return train_ids * (s.per_id - 1), train_ids, test_ids * s.per_id, "the synthetic data"


# ------------------------------------------------------------------ the plan


def seen_gpus(gpus: int | None, gpu_memory: float | None, address: str | None = None):
    """(GPUs, bytes of the smallest, how they were found): ``--gpus`` / ``--gpu-memory``,
    else a running Ray cluster's GPUs (``--address``), else this machine's."""
    assumed = gpu_memory is None
    memory = int((gpu_memory or DEFAULT_GPU_GIB) * GiB)
    said = f"{memory / GiB:g} GiB each" + (
        " (assumed: pass --gpu-memory GIB)" if assumed else " (--gpu-memory)"
    )
    if gpus is not None:
        return gpus, memory, f"{gpus} (--gpus), {said}"
    if address:
        import ray

        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        try:
            found = int(ray.cluster_resources().get("GPU", 0))
        finally:
            ray.shutdown()
        return found, memory, f"{found} in the Ray cluster at {address}, {said}"
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found and assumed:
        memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(found))
        said = f"{memory / GiB:.0f} GiB each ({torch.cuda.get_device_name(0)})"
    if not found:
        raise HandReIDError(
            "--plan: this machine sees no GPU; pass --gpus N (and --gpu-memory GIB) or the "
            "cluster's --address"
        )
    return found, memory, f"{found} on this machine, {said}"


@dataclass
class Row:
    """One memory configuration of the space (backbone, unfrozen depth, ...)."""

    label: str
    backbone: str
    estimate: Any  # handreid.train.memory.MemoryEstimate
    per_gpu: int | None  # None: trials without GPUs
    epoch_flops: float  # training images' steps plus the validation and gallery forwards
    stage1_flops: float  # stage 1 computed (a cache miss): its epochs and feature pass


@dataclass(frozen=True)
class Cluster:
    gpus: int
    packing: float  # trials per GPU, over the space's configurations (shares averaged)
    concurrent: int  # max_concurrent

    @property
    def slots(self) -> int:
        return int(self.gpus * self.packing + 1e-6) if self.packing else self.concurrent

    def running(self, runs: float) -> int:
        return max(1, int(min(self.concurrent, self.slots, math.ceil(runs))))

    def gpus_used(self, running: int) -> int:
        return min(self.gpus, math.ceil(running / self.packing)) if self.packing else 0


@dataclass
class Phase:
    name: str
    runs: float
    epochs: float
    stage1_runs: int
    flops: float
    running: int
    gpus_used: int
    wall_s: float
    note: str = ""


@dataclass
class Plan:
    source: str
    gpus: int
    gpu_bytes: int
    asked: float | str
    trials: int
    max_concurrent: int
    data: tuple[int, int, int, str]
    rows: list[Row]
    phases: list[Phase]
    throughput: Throughput
    warnings: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return sum(p.wall_s for p in self.phases)

    @property
    def gpu_hours(self) -> float:
        return self.wall_s * self.gpus / 3600

    @property
    def busy_gpu_hours(self) -> float:
        return sum(p.wall_s * p.gpus_used for p in self.phases) / 3600


def make_plan(
    space: SearchSpace,
    *,
    gpus: int,
    gpu_bytes: int,
    asked: float | str = resources.AUTO,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    confirm_seeds: int | None = None,
    score_seeds: int | None = None,
    throughput: Throughput | None = None,
) -> Plan:
    """The plan of ``space`` on ``gpus`` GPUs of ``gpu_bytes`` each."""
    tp = throughput or default_throughput(None, None)
    t = space.tune
    trials = num_samples or t.num_samples
    data = data_sizes(space.trial_config({}))
    rows = plan_rows(space, gpu_bytes, asked, data)
    fits = [r.per_gpu for r in rows if r.per_gpu]
    packing = len(fits) / sum(1 / k for k in fits) if fits else 0.0
    cluster = Cluster(gpus, packing, max_concurrent or t.max_concurrent)
    by_backbone: dict[str, list[Row]] = {}
    for row in rows:
        by_backbone.setdefault(row.backbone, []).append(row)
    n = len(by_backbone)
    epochs, complete = search_counts(space, trials)
    phases = [phase("search", trials, epochs / trials, n, by_backbone, cluster, tp, space)]
    seeds = t.confirm.seeds if confirm_seeds is None else confirm_seeds
    scoring = t.confirm.score_seeds if score_seeds is None else score_seeds
    if seeds > 0 and t.confirm.top_k > 0:  # among the complete trials of each backbone
        top = min(t.confirm.top_k, max(1, int(complete)))
        full = space.max_epochs
        phases.append(
            phase("confirmation", n * top * seeds, full, n * seeds, by_backbone, cluster, tp, space)
        )
        phases.append(
            phase(
                "scoring",
                n * scoring,
                full,
                n * scoring,
                by_backbone,
                cluster,
                tp,
                space,
                note="the only runs scored on test",
            )
        )
    warnings = []
    if gpus and fits and cluster.concurrent < cluster.slots:
        warnings.append(
            f"max_concurrent {cluster.concurrent}: {cluster.concurrent} trials at once where "
            f"{cluster.slots} fit ({packing:.1f} per GPU x {gpus}); raise it "
            "(--max-concurrent) to use the GPUs"
        )
    return Plan(
        space.source,
        gpus,
        gpu_bytes,
        asked,
        trials,
        cluster.concurrent,
        data,
        rows,
        phases,
        tp,
        warnings,
    )


def plan_rows(space: SearchSpace, gpu_bytes: int, asked, data) -> list[Row]:
    """Each memory configuration the space can draw, estimated, with its fit and FLOPs."""
    from handreid.train.memory import MemoryInputs

    train, val, _, _ = data
    estimates = resources.space_estimates(space)
    out = []
    for params in resources.memory_params(space):
        cfg = space.trial_config(params)
        est = estimates[MemoryInputs.from_config(cfg)]
        if asked == resources.AUTO:
            fit = resources.per_gpu(est, gpu_bytes) if gpu_bytes else None
        else:
            fit = int(1 / asked) if asked else None
        epoch = train * est.train_flops + (val + train) * est.eval_flops
        stage1 = cfg.train.stage1_epochs * train * est.stage1_flops + train * est.eval_flops
        label = resources.describe(est.inputs)
        out.append(Row(label, cfg.model.backbone, est, fit, epoch, stage1))
    return out


def phase(
    name: str,
    runs: float,
    epochs: float,
    stage1_runs: int,
    by_backbone,
    cluster,
    tp: Throughput,
    space: SearchSpace,
    note: str = "",
) -> Phase:
    """One phase's FLOPs and wall time; its runs split evenly over the backbones and,
    within one, over its configurations (as a uniform draw would)."""
    trial = tp.trial_tflops * 1e12
    share, s1_share = runs / len(by_backbone), stage1_runs / len(by_backbone)
    flops = alone = longest = 0.0
    for rows in by_backbone.values():
        epoch = sum(r.epoch_flops for r in rows) / len(rows)
        stage1 = max(r.stage1_flops for r in rows)
        flops += share * epochs * epoch + s1_share * stage1
        alone += share * (tp.run_start_s + epochs * (epoch / trial + tp.epoch_overhead_s))
        alone += s1_share * stage1 / trial
        slowest = max(r.epoch_flops for r in rows) / trial + tp.epoch_overhead_s
        run = tp.run_start_s + stage1 / trial + space.max_epochs * slowest
        longest = max(longest, run)
    running = cluster.running(runs)
    used = cluster.gpus_used(running)
    packed = flops / (used * tp.gpu_tflops * 1e12) if used else 0.0
    wall = max(packed, alone / running, longest)
    return Phase(name, runs, runs * epochs, stage1_runs, flops, running, used, wall, note)


# ------------------------------------------------------------------ printing


def plan_lines(plan: Plan) -> list[str]:
    train, val, test, where = plan.data
    gpu = f"{plan.gpus} GPU{'s' if plan.gpus != 1 else ''} of {plan.gpu_bytes / GiB:.0f} GiB"
    out = [
        f"plan for {plan.source} on {gpu} (nothing started)",
        f"trials: {plan.trials}, at most {plan.max_concurrent} at once (max_concurrent)",
        f"data: {train} training, {val} validation, {test} test images ({where})",
        f"memory per trial (--gpus-per-trial {plan.asked}):",
    ]
    for row in plan.rows:
        est = row.estimate
        fit = f"{row.per_gpu} per GPU" if row.per_gpu else "no GPU"
        out.append(
            f"  {row.label}: peak {est.peak / GiB:.2f} GiB (stage 2 {est.stage2 / GiB:.2f}, "
            f"stage 1 {est.stage1 / GiB:.2f}), reserved {est.gpu_bytes() / GiB:.2f} GiB "
            f"-> {fit}"
        )
    out.append("expected epochs (early stopping not counted):")
    for p in plan.phases:
        out.append(
            f"  {p.name}: {p.runs:g} runs, {p.epochs:.0f} epochs, stage 1 computed "
            f"{p.stage1_runs}x, {p.flops / 1e15:.1f} PFLOP; {p.running} at once on "
            f"{p.gpus_used} GPU(s): "
            f"{_hours(p.wall_s)}" + (f" ({p.note})" if p.note else "")
        )
    total = sum(p.epochs for p in plan.phases)
    out.append(f"  total: {total:.0f} epochs, {sum(p.flops for p in plan.phases) / 1e15:.1f} PFLOP")
    out.append(plan.throughput.describe())
    out.append(
        f"estimated wall time {_hours(plan.wall_s)}; GPU-hours {plan.gpu_hours:.2f} held "
        f"({plan.busy_gpu_hours:.2f} on GPUs with trials)"
    )
    out += [f"warning: {w}" for w in plan.warnings]
    return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"

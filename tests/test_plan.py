"""``handreid-search --plan`` on the real spaces: trials, expected epochs with confirmation
and scoring, memory and trials per GPU, wall time and GPU-hours from a stated throughput;
nothing started (no Ray, no run directory)."""

from __future__ import annotations

import sys

import pytest

from handreid.train.memory import GiB, MemoryEstimate
from search import plan as plan_module
from search.space import load_space
from tests.conftest import REPO

SPACES = REPO / "spaces"


@pytest.fixture
def stub_estimates(monkeypatch):
    """Estimates without building models: a peak by backbone and depth, fixed FLOPs."""

    def fake(items):
        out = {}
        for i in items:
            peak = (3.0 if i.backbone == "RN50" else 4.0) + (i.unfreeze_blocks == -1)
            out[i] = MemoryEstimate(
                i,
                int(peak * GiB),
                0,
                0,
                0,
                0,
                train_flops=100e9,
                eval_flops=35e9,
                stage1_flops=48e9,
            )
        return out

    monkeypatch.setattr("handreid.train.memory.estimate_many", fake)


def test_expected_epochs_follow_ashas_cut_and_promote_top():
    from dataclasses import replace

    p = plan_module.pass_probability
    assert p(1, 3, 3) == 1.0  # nothing recorded before: no cutoff
    assert p(2, 3, None) == 0.5  # above the 67th percentile of one value: the better half
    assert p(4000, 3, None) == pytest.approx(1 / 3, abs=1e-3)
    assert p(30, 3, 3) == pytest.approx(3 / 30)  # also among the 3 best recorded
    space = load_space(SPACES / "vitb16.yml")  # one rung at 10 of 30, rf 3, promote_top 3
    plain = replace(space, tune=replace(space.tune, promote_top=None, num_samples=4000))
    assert plan_module.expected_search_epochs(plain) / 4000 == pytest.approx(10 + 20 / 3, 1e-3)
    epochs, complete = plan_module.search_counts(space)
    shipped_plain = replace(space, tune=replace(space.tune, promote_top=None))
    plain_epochs, plain_complete = plan_module.search_counts(shipped_plain)
    assert 40 * 10 < epochs < plain_epochs  # promote_top cuts more past the rung
    assert 3 < complete < plain_complete < 40 / 3 + 2


# search epochs: each trial to the rung at 10, then to 30 with pass_probability (promote 3)
@pytest.mark.parametrize(
    "name, trials, search, confirm, score",
    [
        ("vitb16", 40, 571.76, 270, 90),
        ("rn50", 40, 571.76, 270, 90),
        ("compare", 60, 909.49, 540, 180),
    ],
)
def test_the_plan_counts_the_real_spaces_epochs(
    stub_estimates, name, trials, search, confirm, score
):
    space = load_space(SPACES / f"{name}.yml")
    plan = plan_module.make_plan(space, gpus=1, gpu_bytes=int(80 * GiB))
    assert plan.trials == trials
    phases = {p.name: p for p in plan.phases}
    assert phases["search"].epochs == pytest.approx(search, abs=0.01)
    assert phases["confirmation"].epochs == confirm  # top 3 x 3 seeds x 30, per backbone
    assert phases["scoring"].epochs == score  # 3 fresh seeds x 30, per backbone winner
    backbones = 2 if name == "compare" else 1
    assert [p.stage1_runs for p in plan.phases] == [backbones, 3 * backbones, 3 * backbones]
    assert len(plan.rows) == {"vitb16": 8, "rn50": 5, "compare": 13}[name]
    assert plan.wall_s > 0 and plan.gpu_hours == pytest.approx(plan.wall_s / 3600)


def test_memory_decides_trials_per_gpu_and_more_gpus_finish_sooner(stub_estimates):
    space = load_space(SPACES / "vitb16.yml")
    one = plan_module.make_plan(space, gpus=1, gpu_bytes=int(80 * GiB), max_concurrent=64)
    fits = {r.label: r.per_gpu for r in one.rows}
    assert fits["ViT-B-16 (unfreeze all, batch 32)"] == 11  # 80 // (5 x 1.25 + 1)
    assert fits["ViT-B-16 (unfreeze 1, batch 32)"] == 13  # 80 // (4 x 1.25 + 1)
    eight = plan_module.make_plan(space, gpus=8, gpu_bytes=int(80 * GiB), max_concurrent=64)
    assert eight.wall_s < one.wall_s
    assert eight.phases[0].running == 40 and one.phases[0].running == 12  # all 40 / the slots
    shipped = plan_module.make_plan(space, gpus=8, gpu_bytes=int(80 * GiB))
    assert shipped.phases[0].running == 4 and shipped.phases[0].gpus_used == 1
    assert any("max_concurrent 4" in w for w in shipped.warnings)  # 7 GPUs left idle
    fixed = plan_module.make_plan(space, gpus=8, gpu_bytes=int(80 * GiB), asked=1.0)
    assert {r.per_gpu for r in fixed.rows} == {1}


def test_plan_on_the_command_line_starts_nothing(stub_estimates, tmp_path, monkeypatch, capsys):
    from search.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of Ray would fail
    args = ["--space", str(SPACES / "rn50.yml"), "--plan", "--gpus", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "plan for " in out and "on 8 GPUs of 80 GiB (nothing started)" in out
    assert "80 GiB each (assumed: pass --gpu-memory GIB)" in out
    assert "trials: 40, at most 4 at once" in out
    assert "search: 40 runs, 572 epochs, stage 1 computed 1x" in out
    assert "throughput (ASSUMED, not measured" in out and "GPU-hours" in out
    assert "RN50 (unfreeze all, batch 32): peak 4.00 GiB" in out
    assert list(tmp_path.iterdir()) == []  # no run directory, no storage


def test_plan_flags_are_checked(capsys):
    from search.cli import main

    assert main(["--space", str(SPACES / "rn50.yml"), "--gpus", "2"]) == 2
    assert "--gpus applies to --plan only" in capsys.readouterr().err


@pytest.mark.slow
def test_the_plan_with_real_estimates(capsys):
    """The estimates themselves (models built on the CPU, steps on fake tensors)."""
    from search.cli import main

    args = ["--space", str(SPACES / "vitb16.yml"), "--plan", "--gpus", "1", "--gpu-memory", "80"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ViT-B-16 (unfreeze all, batch 32): peak 4.4" in out  # stage 1's text tower
    assert "-> 12 per GPU" in out

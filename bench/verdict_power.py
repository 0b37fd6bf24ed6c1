"""How often the backbone verdict calls a tie "better", and how often it finds a real gap.

Simulated test scores, no training: each backbone's (seeds x splits) test mAP is its mean,
plus a seed effect (per backbone its own sd), plus a split effect (sd ``split_sd``, the
same 10 query/gallery splits for both backbones, correlated ``split_corr`` between them),
plus noise per seed and split. The shipped interval
(``analysis.confirm.difference_interval``) is run on every simulation at once; beside it,
for comparison, the same interval with Welch-Satterthwaite degrees of freedom (not shipped).

    python -m bench.verdict_power [--sims 20000] [--seed 0]

Prints, per setting, the share of simulations in which the verdict says "A is better" and
"B is better" under a true tie (each must stay at most 2.5%), then the power for a true
5-point mAP gap at the default settings (3 scoring seeds per backbone; the demo's 2), and
a 10-point one; then one result line, and writes bench/results/verdict_power.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from analysis.confirm import LEVEL, difference_interval
from bench.common import RESULTS


@dataclass(frozen=True)
class Setting:
    seeds: tuple[int, int]  # scoring seeds of A, of B
    seed_sd: tuple[float, float] = (3.0, 3.0)  # seed-to-seed sd of A, of B (mAP points)
    split_sd: float = 1.5  # sd of a split's effect on one backbone
    gap: float = 0.0  # true mean of A minus B
    split_corr: float = 0.5  # correlation of the two backbones' split effects
    noise_sd: float = 0.5  # per seed and split
    splits: int = 10

    def label(self) -> str:
        return (
            f"| {self.gap:g} | {self.seeds[0]} / {self.seeds[1]} | "
            f"{self.seed_sd[0]:g} / {self.seed_sd[1]:g} | {self.split_sd:g} |"
        )


# the noise settings of issue 23: equal and unequal seed spreads, split sd 1-2 on shared
# splits, 2-5 seeds per backbone and unequal seed counts
NULL_SETTINGS = [
    Setting(seeds, seed_sd, split_sd)
    for seed_sd in ((3.0, 3.0), (5.0, 2.0))
    for seeds in ((2, 2), (3, 3), (4, 4), (5, 5), (2, 5), (5, 2))
    for split_sd in (1.0, 2.0)
]
# the default (3 scoring seeds per backbone), the demo's 2, and more seeds or a larger gap
POWER_SETTINGS = [Setting((n, n), gap=gap) for gap in (5.0, 10.0) for n in (3, 2, 5)]


def simulate(s: Setting, sims: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A's and B's scores, each (sims, seeds, splits)."""
    shared = rng.normal(0.0, s.split_sd, (sims, 1, s.splits))

    def backbone(k: int, mean: float) -> np.ndarray:
        own = rng.normal(0.0, s.split_sd, (sims, 1, s.splits))
        split = np.sqrt(s.split_corr) * shared + np.sqrt(1 - s.split_corr) * own
        seed = rng.normal(0.0, s.seed_sd[k], (sims, s.seeds[k], 1))
        return mean + seed + split + rng.normal(0.0, s.noise_sd, (sims, s.seeds[k], s.splits))

    return backbone(0, 80.0 + s.gap), backbone(1, 80.0)


def better_rates(s: Setting, sims: int, rng: np.random.Generator, interval=None):
    """The share of simulations whose interval says "A is better", and "B is better"."""
    a, b = simulate(s, sims, rng)
    _, low, high, _ = (interval or difference_interval)(a, b)
    return float(np.mean(low > 0)), float(np.mean(high < 0))


def welch_interval(a: np.ndarray, b: np.ndarray):
    """The shipped interval's variance, with Welch-Satterthwaite degrees of freedom."""
    from scipy.stats import t

    value = a.mean(axis=(-2, -1)) - b.mean(axis=(-2, -1))
    parts = [_part(a.mean(-1)), _part(b.mean(-1)), _part(a.mean(-2) - b.mean(-2))]
    total = sum(v for v, _ in parts)
    df = total**2 / sum(v**2 / (n - 1) for v, n in parts)
    half = t.ppf(0.5 + LEVEL / 2, df) * np.sqrt(total)
    return value, value - half, value + half, df


def _part(levels: np.ndarray):
    n = levels.shape[-1]
    return levels.var(axis=-1, ddof=1) / n, n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sims", type=int, default=20_000, help="simulations per setting")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.perf_counter()
    print(f"Tie (true gap 0), {args.sims:,} simulations per setting; % of verdicts:\n")
    ties = _table(NULL_SETTINGS, args)
    print("\nTrue gap (A better by it); power is the share saying A is better:\n")
    gaps = _table(POWER_SETTINGS, args)
    worst = [max(max(r[k]) for r in ties.values()) for k in ("shipped", "welch")]
    line = (
        f"tie called better at most {worst[0]:.2%} per side (Welch df: {worst[1]:.2%}); "
        f"power for 5 points, 3 seeds {gaps[POWER_SETTINGS[0]]['shipped'][0]:.1%}, 2 seeds "
        f"{gaps[POWER_SETTINGS[1]]['shipped'][0]:.1%} ({time.perf_counter() - start:.1f} s)"
    )
    _emit(line, args, {**ties, **gaps})
    return 0


def _table(settings: list[Setting], args) -> dict[Setting, dict]:
    print(
        "| gap | seeds A / B | seed sd A / B | split sd | A better | B better "
        "| with Welch df (not shipped): A / B better |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    out = {}
    for s in settings:
        out[s] = {
            "shipped": better_rates(s, args.sims, np.random.default_rng(args.seed)),
            "welch": better_rates(s, args.sims, np.random.default_rng(args.seed), welch_interval),
        }
        (a, b), (wa, wb) = out[s]["shipped"], out[s]["welch"]
        print(f"{s.label()} {a:.2%} | {b:.2%} | {wa:.2%} / {wb:.2%} |")
    return out


def _emit(line: str, args, rows: dict[Setting, dict]) -> None:
    """The result line, and bench/results/verdict_power.json (no torch: bench.common's
    machine record would import it)."""
    doc = {
        "benchmark": "verdict_power",
        "result": line,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "sims": args.sims,
        "seed": args.seed,
        "rows": [{**asdict(s), **rates} for s, rates in rows.items()],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verdict_power.json").write_text(json.dumps(doc, indent=2))
    print(f"\nverdict_power: {line}")


if __name__ == "__main__":
    raise SystemExit(main())

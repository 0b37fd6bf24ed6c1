"""The one winner per backbone that every report section shows, and the configurations tied
with it within seed noise.

With a confirmation stage the winner is the confirmed one; once fresh seeds scored it, it is
the configuration those seeds scored (``best/<backbone>/test_metrics.json``), even where a
later extension of the confirmation ranks another first. Without one it is the best single
run. Ties compare validation values of the runs that chose (the search run and the
confirmation seeds), never the scoring seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.confirm import Confirmation, difference_interval
from analysis.load import RunData

SELECTION_ROLES = ("search", "confirm")


@dataclass(frozen=True)
class Chosen:
    backbone: str
    config_id: str  # the search trial whose configuration won
    confirmed: bool  # chosen by the mean over confirmation seeds, not by one run
    scoring_seeds: int = 0  # fresh seeds scored on test (0: none)

    @property
    def label(self) -> str:
        return f"{self.backbone} {self.config_id}"


def best_per_backbone(data: RunData) -> pd.DataFrame:
    """The best usable trial of each backbone, best first: its best complete trial, else
    (none complete) its best pruned one, as the search's wrap-up picks it."""
    usable = data.trials[data.trials["status"] != "failed"].dropna(subset=[data.best_column])
    ordered = usable.sort_values(data.best_column, ascending=data.mode == "min", kind="stable")
    ordered = ordered.sort_values("status", key=lambda s: s != "complete", kind="stable")
    return ordered.groupby("backbone", sort=False).head(1).reset_index(drop=True)


def chosen_winners(data: RunData, conf: Confirmation | None) -> dict[str, Chosen]:
    """Backbone -> its winner, in the order of the best single runs (best first)."""
    out = {}
    for row in best_per_backbone(data).itertuples():
        out[row.backbone] = _confirmed(conf, row.backbone) or Chosen(
            row.backbone, str(row.trial_id), False
        )
    for backbone in conf.backbones if conf is not None else []:
        if backbone not in out and (chosen := _confirmed(conf, backbone)):
            out[backbone] = chosen
    return out


def _confirmed(conf: Confirmation | None, backbone: str) -> Chosen | None:
    if conf is None:
        return None
    w = conf.winners.get(backbone)
    if w is not None and w.seeds:  # what the scoring seeds scored
        return Chosen(backbone, w.config_id, True, len(w.seeds))
    rows = conf.configs[(conf.configs["backbone"] == backbone) & conf.configs["winner"]]
    return Chosen(backbone, str(rows["config_id"].iloc[0]), True) if len(rows) else None


def winners_sentence(chosen: dict[str, Chosen]) -> str:
    """One sentence naming each backbone's winner and how it was chosen."""
    if not chosen:
        return "No winner yet: no trial has a value."
    names = ", ".join(c.label for c in chosen.values())
    return f"Each backbone's winner (★ where trials are drawn): {names}, {_how(chosen)}."


def _how(chosen: dict[str, Chosen]) -> str:
    confirmed = [c.confirmed for c in chosen.values()]
    if not any(confirmed):
        return "the best single run per backbone (no confirmation stage)"
    if not all(confirmed):
        return "the confirmed winner where a confirmation ran, else the best single run"
    seeds = sorted({c.scoring_seeds for c in chosen.values()} - {0})
    scored = (
        f"test scores from {' or '.join(map(str, seeds))} fresh seeds"
        if seeds
        else ("not scored on test yet")
    )
    return f"the confirmed winners (best mean validation over the seeds that chose them; {scored})"


# ------------------------------------------------------------------ ties


TIE_COLUMNS = ["backbone", "config_id", "winner_id", "difference", "low", "high", "df", "tied"]


def ties(conf: Confirmation, chosen: dict[str, Chosen]) -> pd.DataFrame:
    """Each confirmed configuration against its backbone's winner: winner minus it in
    validation (mean over the runs that chose), its 95% interval (``difference_interval``
    over the seeds, unpaired; one fewer degrees of freedom than the fewer runs) and whether
    that interval holds 0 (``tied``; None below 2 runs of either)."""
    rows = []
    for r in conf.configs.to_dict("records"):
        winner = chosen.get(r["backbone"])
        if winner is None or str(r["config_id"]) == winner.config_id:
            continue
        a = _selection_values(conf, r["backbone"], winner.config_id)
        b = _selection_values(conf, r["backbone"], str(r["config_id"]))
        rows.append([r["backbone"], str(r["config_id"]), winner.config_id, *_tie(a, b)])
    return pd.DataFrame(rows, columns=TIE_COLUMNS)


def _selection_values(conf: Confirmation, backbone: str, config_id: str) -> np.ndarray:
    v = conf.seed_values
    if v.empty:
        return np.empty(0)
    mine = (v["backbone"] == backbone) & (v["config_id"].astype(str) == config_id)
    return v.loc[mine & v["role"].isin(SELECTION_ROLES), "value"].to_numpy(dtype=float)


def _tie(a: np.ndarray, b: np.ndarray) -> list:
    if min(len(a), len(b)) < 2:
        diff = float(a.mean() - b.mean()) if len(a) and len(b) else np.nan
        return [diff, np.nan, np.nan, np.nan, None]
    value, low, high, df = difference_interval(a[:, None], b[:, None], paired=False)
    return [value, low, high, df, bool(low <= 0 <= high)]


def tie_lines(table: pd.DataFrame) -> list[str]:
    """One line per configuration tied with its backbone's winner."""
    out = []
    for r in table[table["tied"] == True].itertuples():  # noqa: E712
        out.append(
            f"{r.backbone}: {r.config_id} is tied with the winner {r.winner_id} within seed "
            f"noise (winner − it {r.difference:+.2f} validation points, 95% CI {r.low:.2f} to "
            f"{r.high:.2f}, {int(r.df)} degrees of freedom); the winner is only the higher mean."
        )
    return out


def marks(chosen: dict[str, Chosen], tied: pd.DataFrame | None = None) -> dict[str, str]:
    """Trial id -> its mark in the tables: the winners, and the configurations tied with them."""
    out = {
        c.config_id: "★ confirmed winner" if c.confirmed else "★ best single run"
        for c in chosen.values()
    }
    if tied is not None and len(tied):
        for r in tied[tied["tied"] == True].itertuples():  # noqa: E712
            out[r.config_id] = f"tied with {r.winner_id}"
    return out

"""Search-space files: parsing, validation and the Optuna define-by-run function.

Pure Python: nothing here imports Ray or Optuna (the define-by-run function only calls
``suggest_*`` on the trial it is given), so the whole conversion is testable without them.

A space file has four sections::

    base: base/tiny.yml                 # path relative to the space file, or an inline mapping
    fixed: {train.stage1_epochs: 3}     # dotted overrides applied to every trial
    search:
      optim.lr_visual: {type: float, low: 1e-4, high: 1e-2, log: true}
      loss.center.use: {type: bool}
      loss.center.weight: {type: float, low: 1e-4, high: 1e-3, log: true,
                           when: {loss.center.use: true}}
      model.unfreeze_blocks:            # one branch per condition (ranges per backbone)
        - {when: {model.backbone: tiny-vit}, type: int, low: -1, high: 2}
        - {when: {model.backbone: tiny-rn}, type: int, low: -1, high: 4}
    start_points:                       # evaluated first; unlisted keys take the base value
      - {model.backbone: tiny-vit}
    tune: {num_samples: 12, metric: val_mAP, mode: max, scheduler: {...}, resources: {...},
           confirm: {top_k: 3, seeds: 3, score_seeds: 3}}  # retrain the top 3 per backbone
                                        # with 3 more seeds; the winner with 3 fresh ones

Integer bounds are inclusive. A branch's Optuna parameter name is ``key`` when the key
has one branch and ``key (cond=value)`` otherwise, as optuna-dashboard shows it;
:func:`config_key` maps it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from handreid.config import (
    Config,
    absolute_overrides,
    absolute_paths,
    apply_overrides,
    flatten,
    from_dict,
    read_yaml,
    to_dict,
)
from handreid.errors import ConfigError

TYPES = ("float", "int", "categorical", "bool")
GPUS = "must be >= 0 or auto (a share sized by the trial's memory estimate)"


def config_key(name: str) -> str:
    """Optuna parameter name -> dotted config key."""
    return name.split(" (", 1)[0].split("|", 1)[0]  # "|": names before the current form


@dataclass(frozen=True)
class Branch:
    name: str  # Optuna parameter name
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: tuple[tuple[str, Any], ...] = ()

    def active(self, values: dict[str, Any]) -> bool:
        return all(k in values and values[k] == v for k, v in self.when)

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        if self.type == "bool":
            return trial.suggest_categorical(self.name, [False, True])
        return trial.suggest_categorical(self.name, list(self.choices))

    def contains(self, value: Any) -> bool:
        if self.type == "bool":
            return isinstance(value, bool)
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.type in ("float", "int"):
            return f"{self.type} [{self.low}, {self.high}]" + (" log" if self.log else "")
        return f"one of {list(self.choices) if self.type == 'categorical' else [False, True]}"


@dataclass(frozen=True)
class Param:
    key: str
    branches: tuple[Branch, ...]

    def branch_for(self, values: dict[str, Any]) -> Branch | None:
        return next((b for b in self.branches if b.active(values)), None)


@dataclass(frozen=True)
class ConfirmSettings:
    """After the search: the ``top_k`` configurations per backbone (by the objective) are
    trained again with ``seeds`` more training seeds; ``seeds: 0`` turns this off. Each
    backbone's winner (best mean) is then trained with ``score_seeds`` fresh seeds, which
    chose nothing, and only those are scored on the test protocol."""

    top_k: int = 3
    seeds: int = 3
    score_seeds: int = 3


# scoring seeds are the search run's train.seed + SCORE_SEED_OFFSET + 1, 2, ...: confirmation
# seeds (train.seed + 1, 2, ...) stay below it, so no seed that chose ever scores
SCORE_SEED_OFFSET = 1000


@dataclass(frozen=True)
class TuneSettings:
    num_samples: int = 12
    metric: str = "val_mAP"
    mode: str = "max"
    seed: int = 0
    # the model that proposes trials (search.strategy.build_sampler): "tpe" (multivariate,
    # grouped by conditions), "independent-tpe" (one TPE per parameter) or "gp" (Optuna's
    # Gaussian-process sampler)
    sampler: Literal["tpe", "independent-tpe", "gp"] = "tpe"
    n_startup_trials: int = 5  # random trials before the model takes over
    max_concurrent: int = 2
    grace_period: int = 2
    reduction_factor: int = 2
    # the rungs' epochs, set directly (e.g. [10]: one rung at epoch 10) instead of Ray's
    # grace_period * reduction_factor**k; each keeps the best 1/reduction_factor
    rungs: tuple[int, ...] | None = None
    # a trial passes a rung only among the best promote_top values recorded there, too
    promote_top: int | None = None
    # asynchronous Hyperband: bracket s starts pruning at grace_period * reduction_factor**s;
    # 1 is plain ASHA (bench.tabular replay chooses per space)
    brackets: int = 1
    # no rung judges a trial before this share of its own epochs (nor inside its warm-up)
    judge_after: float = 0.0
    max_epochs: int | None = None  # default: the base config's train.epochs
    cpus_per_trial: float = 1.0
    # "auto": each trial's share of a GPU from its configuration's memory estimate
    # (search.resources)
    gpus_per_trial: float | Literal["auto"] = 0.0
    max_failures: int = 2
    top_k: int = 3
    checkpoints_to_keep: int = 2
    balance: str | None = None  # a categorical key whose choices get equal trial counts
    # ASHA's rungs per value of this categorical key (when searched): trials are cut against
    # their own backbone's; null: one set of rungs for all
    bracket_by: str | None = "model.backbone"
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)

    def milestones(self, max_epochs: int) -> list[int]:
        """ASHA's first bracket's rungs (epochs, ascending) below ``max_epochs``: ``rungs``,
        else Ray's ``grace_period * reduction_factor**k``."""
        if self.rungs is not None:
            return [r for r in self.rungs if r < max_epochs]
        out, rung = [], self.grace_period
        while rung < max_epochs:
            out.append(rung)
            rung *= self.reduction_factor
        return out


@dataclass
class SearchSpace:
    source: str
    base: Config
    fixed: dict[str, Any]
    params: list[Param]
    start_points: list[dict[str, Any]] = field(default_factory=list)
    tune: TuneSettings = field(default_factory=TuneSettings)

    # --------------------------------------------------------------- Optuna

    def bracket_key(self) -> str | None:
        """The parameter whose values get their own ASHA rungs, if it is searched."""
        key = self.tune.bracket_by
        return key if key in {p.key for p in self.params} else None

    def balanced(self) -> tuple[str, list] | None:
        """``tune.balance``'s Optuna parameter and its choices, if set."""
        key = self.tune.balance
        if key is None:
            return None
        param = next(p for p in self.params if p.key == key)
        return key, list(param.branches[0].choices)

    def group_key(self) -> tuple[str, list] | None:
        """The parameter whose values are tuned apart (each from its own trials' model, see
        ``search.sampler``), with its choices: ``tune.balance``, else the backbone's key
        (``tune.scheduler.bracket_by``) when searched."""
        key = self.tune.balance or self.bracket_key()
        param = next((p for p in self.params if p.key == key), None)
        if param is None or param.branches[0].type != "categorical":
            return None
        return key, list(param.branches[0].choices)

    def define_by_run(self, trial) -> None:
        """Suggest every active parameter on ``trial`` (an Optuna trial or compatible)."""
        values: dict[str, Any] = {}
        for param in self.params:
            branch = param.branch_for(values)
            if branch is not None:
                values[param.key] = branch.suggest(trial)

    def optuna_point(self, point: dict[str, Any]) -> dict[str, Any]:
        """A start point (dotted keys) as Optuna parameter names, unlisted keys from the base."""
        base = flatten(to_dict(self.trial_config({})))
        values: dict[str, Any] = {}
        out: dict[str, Any] = {}
        for param in self.params:
            branch = param.branch_for(values)
            if branch is None:
                continue
            value = point.get(param.key, base.get(param.key))
            if not branch.contains(value):
                raise ConfigError(
                    f"start point value {value!r} is outside the space ({branch.describe()})",
                    key=f"start_points.{param.key}",
                    source=self.source,
                )
            values[param.key] = out[branch.name] = value
        return out

    def optuna_points(self) -> list[dict[str, Any]]:
        return [self.optuna_point(p) for p in self.start_points]

    def owned_keys(self) -> dict[str, str]:
        """Config keys that the space itself sets in every trial, with what sets them: a
        base-config override of one would be overwritten without a word."""
        owned = {p.key: "the space searches this key" for p in self.params}
        if self.tune.max_epochs is not None:
            owned["train.epochs"] = f"the space's tune max_epochs ({self.tune.max_epochs}) sets it"
        return owned

    @property
    def warnings(self) -> list[str]:
        """Legal but wasteful or unfair settings, one line each."""
        return wasted_values(self) + unbalanced_comparison(self)

    # --------------------------------------------------------------- configs

    @property
    def max_epochs(self) -> int:
        return self.tune.max_epochs or self.base.train.epochs

    def trial_config(self, params: dict[str, Any], extra: dict[str, Any] | None = None) -> Config:
        """Base config + fixed overrides + ``extra`` + a trial's parameters (Optuna names),
        with early stopping held back to the space's judge point as ASHA's rungs are
        (``train.patience_after``; a later one the config sets is kept)."""
        flat = {**self.fixed, "train.epochs": self.max_epochs, **(extra or {})}
        flat.update({config_key(name): value for name, value in params.items()})
        cfg = apply_overrides(self.base, flat)
        if cfg.train.patience_after >= self.tune.judge_after:
            return cfg
        return apply_overrides(cfg, {"train.patience_after": self.tune.judge_after})


# ------------------------------------------------------------------ parsing


def load_space(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchSpace:
    """Read and validate a space file; every error names the file and the key."""
    path = Path(path)
    source = str(path)
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError("a space file must be a mapping", source=source)
    unknown = set(doc) - {"base", "fixed", "search", "start_points", "tune"}
    if unknown:
        raise ConfigError(f"unknown section {sorted(unknown)[0]!r}", source=source)
    try:
        base = _load_base(doc.get("base"), path.parent)
        # every path absolute: Ray runs each trial in a folder of its own
        fixed = absolute_overrides({**(doc.get("fixed") or {}), **(overrides or {})})
        base = absolute_paths(apply_overrides(base, fixed))  # as trials see it
        params = _parse_params(doc.get("search") or {}, base)
        tune = _parse_tune(doc.get("tune") or {})
        _check_categorical(tune.balance, params, "tune.balance")
        if tune.bracket_by != TuneSettings.bracket_by or tune.bracket_by in {p.key for p in params}:
            _check_categorical(tune.bracket_by, params, "tune.scheduler.bracket_by")
        points = doc.get("start_points") or []
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise ConfigError("must be a list of mappings", key="start_points")
    except ConfigError as err:
        raise (err if err.source else err.in_file(source)) from None
    space = SearchSpace(source, base, fixed, params, points, tune)
    try:
        space.trial_config({})
    except ConfigError as err:
        raise err.in_file(source) from None
    for point in points:
        for key in point:
            if key not in {p.key for p in params}:
                raise ConfigError(
                    "start point sets a key that is not searched",
                    key=f"start_points.{key}",
                    source=source,
                )
        space.optuna_point(point)
    return space


def _check_categorical(key: str | None, params: list[Param], where: str) -> None:
    """``key`` (if set) names a searched categorical parameter without conditions."""
    if key is None:
        return
    param = next((p for p in params if p.key == key), None)
    if param is None or len(param.branches) != 1 or param.branches[0].when:
        raise ConfigError(f"{key!r} is not a searched parameter without conditions", key=where)
    if param.branches[0].type != "categorical":
        raise ConfigError(f"{key!r} is not categorical", key=where)


def wasted_values(space: SearchSpace) -> list[str]:
    """Values a trial can draw that cannot change its objective: budget spent on nothing."""
    out = []
    searched = {p.key for p in space.params}
    for param in space.params:
        if param.key != "model.unfreeze_blocks" or "model.retrieval_feature" in searched:
            continue
        if space.base.model.retrieval_feature != "pre_bn":
            continue
        for branch in param.branches:
            if branch.contains(0):
                out.append(
                    f"{space.source}: search.{branch.name} can draw 0, which freezes the whole "
                    "image encoder; retrieval uses the pre-BN encoder feature, so such a "
                    "trial's validation mAP never changes and its GPU time is wasted (start "
                    "the range at 1, or list choices such as [1, 2, 4, -1])"
                )
    return out


def unbalanced_comparison(space: SearchSpace) -> list[str]:
    """A space that compares backbones but lets TPE spend the budget where it likes: most
    trials go to the backbone that scores higher early, and the other is compared on few."""
    if space.tune.balance is not None or "model.backbone" not in {p.key for p in space.params}:
        return []
    return [
        f"{space.source}: model.backbone is searched without tune.balance; TPE spends most "
        "trials on the backbone that scores higher early, so the comparison rests on few "
        "trials of the other (set tune.balance: model.backbone)"
    ]


SHIPPED_SPACES = Path(__file__).resolve().parents[1] / "spaces"  # the project's own spaces/


def base_path(base: str, folder: Path) -> Path:
    """A space's ``base:`` file: as written when absolute; else next to the space file, then
    in the shipped ``spaces/`` folder (a space copied elsewhere keeps finding
    ``base/tiny.yml``). Neither there: an error naming both places."""
    if Path(base).is_absolute():
        return Path(base)
    places = list(dict.fromkeys(p.resolve() for p in (folder / base, SHIPPED_SPACES / base)))
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        raise ConfigError(
            f"{base}: file not found; looked in {' and in '.join(map(str, places))}",
            key="base",
        )
    return found


def _load_base(base: Any, folder: Path) -> Config:
    if base is None:
        raise ConfigError("missing: a path to a base config or an inline mapping", key="base")
    if isinstance(base, str):
        path = base_path(base, folder)
        try:
            return from_dict(Config, read_yaml(path))
        except ConfigError as err:
            raise (err if err.source else err.in_file(str(path))) from None
    if isinstance(base, dict):
        try:
            return from_dict(Config, base)
        except ConfigError as err:
            raise err.at("base") from None
    raise ConfigError("must be a path or a mapping", key="base")


def _parse_params(search: dict, base: Config) -> list[Param]:
    if not isinstance(search, dict) or not search:
        raise ConfigError("must map at least one dotted config key to a range", key="search")
    known = flatten(to_dict(base))
    params: list[Param] = []
    for key, spec in search.items():
        if key not in known:
            raise ConfigError("not a key of the config tree", key=f"search.{key}")
        specs = spec if isinstance(spec, list) else [spec]
        if not specs:
            raise ConfigError("no branches", key=f"search.{key}")
        names = [_branch_name(key, s, len(specs)) for s in specs]
        branches = tuple(
            _parse_branch(s, name, f"search.{key}", params, base, key)
            for s, name in zip(specs, names)
        )
        if len(set(names)) != len(names):
            raise ConfigError("branches need distinct `when` conditions", key=f"search.{key}")
        params.append(Param(key, branches))
    return params


def _branch_name(key: str, spec: Any, n_branches: int) -> str:
    if n_branches == 1 or not isinstance(spec, dict):
        return key
    when = spec.get("when") or {}
    return f"{key} (" + ", ".join(f"{k}={v}" for k, v in when.items()) + ")"


def _parse_branch(
    spec: Any, name: str, where: str, earlier: list[Param], base: Config, key: str
) -> Branch:
    if not isinstance(spec, dict):
        raise ConfigError("must be a mapping with a `type`", key=where)
    unknown = set(spec) - {"type", "low", "high", "log", "step", "choices", "when"}
    if unknown:
        raise ConfigError(f"unknown field {sorted(unknown)[0]!r}", key=where)
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"type must be one of {', '.join(TYPES)}, got {kind!r}", key=where)
    when = _parse_when(spec.get("when"), where, earlier)
    if kind in ("float", "int"):
        low, high = _number(spec, "low", where), _number(spec, "high", where)
        if low >= high:
            raise ConfigError(f"low must be < high, got low={low}, high={high}", key=where)
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"log scale needs low > 0, got {low}", key=where)
        if kind == "int" and (int(low) != low or int(high) != high):
            raise ConfigError("int bounds must be integers", key=where)
        step = spec.get("step")
        branch = Branch(name, kind, low, high, log, step, when=when)
    elif kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError("categorical needs a non-empty `choices` list", key=where)
        branch = Branch(name, kind, choices=tuple(choices), when=when)
    else:
        branch = Branch(name, kind, when=when)
    _check_values_fit_config(branch, base, key, where)
    return branch


def _number(spec: dict, field_name: str, where: str) -> float:
    value = spec.get(field_name)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"`{field_name}` must be a number, got {value!r}", key=where)
    return value


def _parse_when(when: Any, where: str, earlier: list[Param]) -> tuple[tuple[str, Any], ...]:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise ConfigError("`when` must map a searched key to a value", key=where)
    by_key = {p.key: p for p in earlier}
    for cond_key, value in when.items():
        if cond_key not in by_key:
            raise ConfigError(
                f"`when` points to {cond_key!r}, which is not a parameter searched above it",
                key=where,
            )
        if not any(b.contains(value) for b in by_key[cond_key].branches):
            raise ConfigError(
                f"`when` value {value!r} can never be drawn for {cond_key}", key=where
            )
    return tuple(when.items())


def _check_values_fit_config(branch: Branch, base: Config, key: str, where: str) -> None:
    """The range's ends (or every choice) must be valid config values, e.g. unfreeze depth."""
    if branch.type == "categorical":
        samples = list(branch.choices)
    elif branch.type == "bool":
        samples = [False, True]
    else:
        samples = [branch.low, branch.high]
        if branch.type == "int":
            samples = [int(v) for v in samples]
    overrides = dict(branch.when)
    for value in samples:
        try:
            apply_overrides(base, {**overrides, key: value})
        except ConfigError as err:
            raise ConfigError(
                f"value {value!r} is invalid here: {err.message}", key=where
            ) from None


def _parse_tune(doc: dict) -> TuneSettings:
    if not isinstance(doc, dict):
        raise ConfigError("must be a mapping", key="tune")
    flat = dict(doc)
    scheduler = flat.pop("scheduler", None) or {}
    resources = flat.pop("resources", None) or {}
    if scheduler.get("type", "asha") != "asha":
        raise ConfigError("only the asha scheduler is supported", key="tune.scheduler.type")
    mapped = {
        **flat,
        **{k: v for k, v in scheduler.items() if k != "type"},
        **{f"{k}_per_trial": v for k, v in resources.items()},
    }
    if "rungs" in scheduler and "grace_period" in scheduler:
        raise ConfigError("set rungs or grace_period, not both", key="tune.scheduler.rungs")
    try:
        tune = from_dict(TuneSettings, mapped)
    except ConfigError as err:
        raise err.at("tune") from None
    _check_rungs(tune)
    checks = [
        (tune.num_samples >= 1, "num_samples", "must be >= 1"),
        (tune.mode in ("max", "min"), "mode", "must be max or min"),
        (tune.grace_period >= 1, "grace_period", "must be >= 1"),
        (tune.reduction_factor >= 2, "reduction_factor", "must be >= 2"),
        (tune.brackets >= 1, "brackets", "must be >= 1"),
        (tune.promote_top is None or tune.promote_top >= 1, "promote_top", "must be >= 1"),
        (0 <= tune.judge_after < 1, "judge_after", "must be in [0, 1)"),
        (
            tune.max_epochs is None or tune.rungs or tune.max_epochs >= tune.grace_period,
            "max_epochs",
            "must be >= grace_period",
        ),
        (tune.cpus_per_trial > 0, "cpus_per_trial", "must be > 0"),
        (tune.gpus_per_trial == "auto" or tune.gpus_per_trial >= 0, "gpus_per_trial", GPUS),
        (tune.max_concurrent >= 1, "max_concurrent", "must be >= 1"),
        (tune.top_k >= 0, "top_k", "must be >= 0"),
        (tune.confirm.top_k >= 0, "confirm.top_k", "must be >= 0"),
        (tune.confirm.seeds >= 0, "confirm.seeds", "must be >= 0 (0: no confirmation)"),
        (
            tune.confirm.seeds < SCORE_SEED_OFFSET,
            "confirm.seeds",
            f"must be < {SCORE_SEED_OFFSET} (scoring seeds start there)",
        ),
        (tune.confirm.score_seeds >= 1, "confirm.score_seeds", "must be >= 1"),
    ]
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(message, key=f"tune.{key}")
    return tune


def _check_rungs(tune: TuneSettings) -> None:
    """``tune.scheduler.rungs``: epochs >= 1, strictly ascending, below ``max_epochs``."""
    if tune.rungs is None:
        return
    where = "tune.scheduler.rungs"
    rungs = list(tune.rungs)
    if not rungs or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rungs):
        raise ConfigError("must be a non-empty list of epochs >= 1", key=where)
    if rungs != sorted(set(rungs)):
        raise ConfigError(f"must be strictly ascending, got {rungs}", key=where)
    if tune.max_epochs is not None and rungs[-1] >= tune.max_epochs:
        raise ConfigError(
            f"every rung must lie before max_epochs ({tune.max_epochs}), got {rungs}", key=where
        )

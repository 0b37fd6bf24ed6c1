"""The experiment config: one frozen dataclass tree, loaded from YAML once at the edge.

Sections follow the data flow: ``data``, ``model``, ``loss``, ``optim``, ``train``,
``eval``. Every invariant is checked in ``__post_init__``; a wrong key, type or value
raises :class:`ConfigError` naming the dotted key. Trial parameters and ``--set``
overrides are flat dicts of dotted keys applied by :func:`apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from handreid.errors import ConfigError

Aspect = Literal["dorsal_r", "dorsal_l", "palmar_r", "palmar_l"]
ASPECTS: tuple[str, ...] = typing.get_args(Aspect)


# Field metadata marking a path-valued field (``path_keys`` finds them): a run reads an
# input path, which must exist, and writes under a cache path, made when first used. A
# search makes every one absolute before its trials start (Ray runs each trial in its own
# folder), and refuses a missing input there.
INPUT_PATH = {"path": "input"}
INPUT_PATH_OR_TAG = {"path": "input_or_tag"}  # a path when it looks like one (model.pretrained)
CACHE_PATH = {"path": "cache"}


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(message, key=key)


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic hands generated when ``data.root`` is null (tests and the CPU demo)."""

    ids: int = 40
    per_id: int = 6
    width: int = 64
    height: int = 48
    seed: int = 0
    aspects: tuple[Aspect, ...] = ("dorsal_r",)

    def __post_init__(self) -> None:
        _check(self.ids >= 4, "ids", f"must be >= 4, got {self.ids}")
        _check(self.per_id >= 2, "per_id", f"must be >= 2, got {self.per_id}")
        _check(self.width >= 16 and self.height >= 16, "width", "images must be at least 16x16")
        _check(len(self.aspects) > 0, "aspects", "must list at least one aspect")


@dataclass(frozen=True)
class DataConfig:
    root: str | None = field(default=None, metadata=INPUT_PATH)  # 11k layout; null: ``synth``
    aspect: Aspect = "dorsal_r"
    split: Literal["standard", "random"] = "standard"
    test_fraction: float = 0.5  # random split only
    split_seed: int = 0  # random identity split and the validation hold-out
    filter_accessories: bool = True
    # a `handreid-data prepare` cache to read images from
    prepared: str | None = field(default=None, metadata=INPUT_PATH)
    # a partial copy: use the listed images that exist (the identity split is computed on
    # them and split.json records it as non-standard); false: a missing image is an error
    subset: bool = False
    # the validation and training images, decoded once per run at the model's input size
    # and kept (uint8) when they fit in this many MiB; 0: decode them on every pass
    decode_cache_mib: int = 1024
    num_workers: int = 0
    flip_prob: float = 0.0  # off: a flipped right hand looks like a left one
    pad: int = 10
    color_jitter: float = 0.0
    random_erasing: float = 0.5
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self) -> None:
        _check(0.0 < self.test_fraction < 1.0, "test_fraction", "must be in (0, 1)")
        _check(self.num_workers >= 0, "num_workers", "must be >= 0")
        _check(self.decode_cache_mib >= 0, "decode_cache_mib", "must be >= 0")
        for key in ("flip_prob", "random_erasing"):
            value = getattr(self, key)
            _check(0.0 <= value <= 1.0, key, f"must be a probability in [0, 1], got {value}")
        _check(self.pad >= 0, "pad", "must be >= 0")
        _check(self.color_jitter >= 0, "color_jitter", "must be >= 0")


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "ViT-B-16"
    # "openai", "none", or a local checkpoint file
    pretrained: str = field(default="openai", metadata=INPUT_PATH_OR_TAG)
    # Towers' activation. OpenAI's weights were trained with QuickGELU, but open_clip builds
    # ViT-B-16 / RN50 with GELU. "auto" follows the weights (open_clip's tag registry, OpenAI's
    # file format); an explicit value that contradicts known weights is refused.
    activation: Literal["auto", "gelu", "quick_gelu"] = "auto"
    cache_dir: str | None = field(default=None, metadata=CACHE_PATH)  # open_clip's downloads
    n_ctx: int = 4
    templates: tuple[str, ...] = ("A photo of a X X X X hand.",)
    unfreeze_blocks: int = -1  # 0 = frozen encoder, N = last N blocks, -1 = everything
    retrieval_feature: Literal["pre_bn", "pre_post"] = "pre_bn"

    def __post_init__(self) -> None:
        from handreid.models.registry import available_backbones, vision_depth
        from handreid.models.weights import activation_mismatch, tag_quick_gelu

        _check(
            self.backbone in available_backbones(),
            "backbone",
            f"unknown backbone {self.backbone!r}; valid: {', '.join(available_backbones())}",
        )
        _check(self.n_ctx >= 1, "n_ctx", f"must be >= 1, got {self.n_ctx}")
        _check(len(self.templates) > 0, "templates", "must list at least one template")
        for template in self.templates:
            found = _count_placeholders(template)
            _check(
                "{}" in template or found == self.n_ctx,
                "templates",
                f"template {template!r} must contain '{{}}' or exactly n_ctx={self.n_ctx} "
                f"'X' placeholders (found {found})",
            )
        depth = vision_depth(self.backbone)
        _check(
            -1 <= self.unfreeze_blocks <= depth,
            "unfreeze_blocks",
            f"must be -1 (all), 0 (frozen) or up to {depth} for {self.backbone}, "
            f"got {self.unfreeze_blocks}",
        )
        trained = tag_quick_gelu(self.backbone, self.pretrained)
        weights = f"the {self.pretrained!r} weights of {self.backbone}"
        problem = activation_mismatch(self.activation, trained, weights)
        _check(not problem, "activation", problem)


def _count_placeholders(template: str) -> int:
    return sum(1 for word in template.replace(".", " ").replace(",", " ").split() if word == "X")


# ---------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class IdLossConfig:
    use: bool = True
    weight: float = 1.0
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        _check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")


@dataclass(frozen=True)
class ArcFaceConfig:
    use: bool = True
    weight: float = 1.0
    scale: float = 30.0
    margin: float = 0.5

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        _check(self.scale > 0, "scale", f"must be > 0, got {self.scale}")
        _check(0 <= self.margin < 1.5, "margin", f"must be in [0, 1.5) radians, got {self.margin}")


@dataclass(frozen=True)
class SupConConfig:
    use: bool = True
    weight: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class TripletConfig:
    use: bool = True
    weight: float = 1.0
    margin: float = 0.3

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        _check(self.margin >= 0, "margin", f"must be >= 0, got {self.margin}")


@dataclass(frozen=True)
class CenterConfig:
    use: bool = True
    weight: float = 5e-4
    lr: float = 0.5

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


@dataclass(frozen=True)
class LossConfig:
    id: IdLossConfig = field(default_factory=IdLossConfig)
    arcface: ArcFaceConfig = field(default_factory=ArcFaceConfig)
    supcon: SupConConfig = field(default_factory=SupConConfig)
    triplet: TripletConfig = field(default_factory=TripletConfig)
    center: CenterConfig = field(default_factory=CenterConfig)

    def enabled(self) -> dict[str, Any]:
        """The switched-on losses by name, in a fixed order."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name).use
        }

    def __post_init__(self) -> None:
        on = [name for name, part in self.enabled().items() if part.weight > 0]
        _check(bool(on), "use", "every loss is switched off (or has weight 0); enable at least one")


# ---------------------------------------------------------------------------- optimiser


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "adamw"] = "adamw"
    lr_prompt: float = 3.5e-4  # stage 1: the prompt context
    weight_decay_prompt: float = 1e-4
    lr_visual: float = 1e-5  # stage 2: unfrozen image-encoder blocks
    lr_heads: float = 3.5e-4  # stage 2: BNNeck, classifier, ArcFace
    weight_decay: float = 5e-4
    scheduler: Literal["cosine", "onecycle", "step"] = "cosine"
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # step scheduler
    gamma: float = 0.1
    grad_clip: float = 0.0  # max grad norm; 0 = off

    def __post_init__(self) -> None:
        for key in ("lr_prompt", "lr_visual", "lr_heads"):
            value = getattr(self, key)
            _check(value > 0, key, f"must be > 0, got {value}")
        for key in ("weight_decay", "weight_decay_prompt", "warmup_epochs", "grad_clip"):
            value = getattr(self, key)
            _check(value >= 0, key, f"must be >= 0, got {value}")
        _check(self.step_epochs >= 1, "step_epochs", "must be >= 1")
        _check(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")


# ---------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    stage1_epochs: int = 30
    stage1_batch_size: int = 64
    stage1_temperature: float = 0.05  # SupCon temperature of prompt learning (unit features)
    epochs: int = 30  # stage 2
    batch_size: int = 32
    num_instances: int = 4  # K of the PK sampler
    patience: int = 5  # early stopping on val mAP; 0 = off
    # no epoch before this share of the epochs (nor inside the warm-up) counts against
    # patience; a search sets it to its tune.scheduler.judge_after
    patience_after: float = 0.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    grad_accum: int = 1
    cpu: bool = False
    # directory; null = ~/.cache/handreid/stage1
    stage1_cache: str | None = field(default=None, metadata=CACHE_PATH)
    stage1_reuse: bool = True  # false: always compute stage 1 (no cache read or write)
    keep_checkpoints: bool = True  # write resumable state
    # ... every this many epochs, at the last, and at each of checkpoint_epochs (a search sets
    # its scheduler's rungs there: a stopped trial's last state holds its best so far); a
    # failure re-runs at most checkpoint_every - 1 finished epochs, exactly
    checkpoint_every: int = 1
    checkpoint_epochs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check(self.stage1_epochs >= 0, "stage1_epochs", "must be >= 0")
        _check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        _check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _check(self.stage1_batch_size >= 2, "stage1_batch_size", "must be >= 2")
        _check(self.stage1_temperature > 0, "stage1_temperature", "must be > 0")
        _check(self.num_instances >= 1, "num_instances", "must be >= 1")
        _check(
            self.batch_size >= 2 and self.batch_size % self.num_instances == 0,
            "batch_size",
            f"must be a multiple of num_instances (K={self.num_instances}), got {self.batch_size}",
        )
        _check(self.batch_size // self.num_instances >= 2, "batch_size", "needs P >= 2 identities")
        _check(self.patience >= 0, "patience", "must be >= 0")
        _check(0 <= self.patience_after < 1, "patience_after", "must be in [0, 1)")
        # Refused rather than half-supported: accumulation would need the center step, the
        # scheduler's step count and the per-epoch sync state reworked, and fp16 would need
        # a loss scaler per optimiser in both stages. bf16 needs neither and is the default.
        _check(
            self.grad_accum == 1,
            "grad_accum",
            f"gradient accumulation is not supported (got {self.grad_accum}); use 1 and a "
            "batch size that fits, or bf16 to fit a larger one",
        )
        _check(
            self.mixed_precision != "fp16",
            "mixed_precision",
            "fp16 is not supported (it needs loss scaling); use bf16 or no",
        )


@dataclass(frozen=True)
class EvalConfig:
    n_splits: int = 10
    protocol: Literal["per_aspect", "gallery_all"] = "per_aspect"
    flip_tta: bool = False
    batch_size: int = 128
    split_seed: int = 0

    def __post_init__(self) -> None:
        _check(self.n_splits >= 1, "n_splits", "must be >= 1")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.loss.triplet.use and self.train.num_instances < 2:
            raise ConfigError(
                "the triplet loss needs K >= 2 images per identity", key="train.num_instances"
            )


# ---------------------------------------------------------------------------- loading


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a plain mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", key=path or None)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
        raise ConfigError(f"unknown key {key!r}{hint}", key=_join(path, key))
    kwargs = {k: _coerce(hints[k], v, _join(path, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.at(path) if path else err from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against ``tp``; convert only lossless cases (int->float, list->tuple)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for tp_ in inner[:-1]:  # e.g. ``float | Literal["auto"]``: the first that takes it
            try:
                return _coerce(tp_, value, key)
            except ConfigError:
                pass
        return _coerce(inner[-1], value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"must be one of {', '.join(map(repr, choices))}, got {value!r}", key=key
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", key=key)
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", key=key)
        return value
    if tp is float:
        return _as_float(value, key)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", key=key)
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a bug in this module


def _as_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"expected a number, got {value!r}", key=key)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"expected a number, got {value!r}", key=key)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("file not found", source=str(path))
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"malformed YAML{where}: {getattr(err, 'problem', err)}", source=str(path)
        ) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML file (or the defaults) and apply dotted overrides."""
    source = str(path) if path is not None else None
    raw = read_yaml(path) if path is not None else {}
    try:
        cfg = from_dict(Config, raw)
        return apply_overrides(cfg, overrides or {})
    except ConfigError as err:
        raise err.in_file(source) if source and not err.source else err from None


def apply_overrides(cfg: Config, flat: dict[str, Any]) -> Config:
    """Return ``cfg`` with each dotted key of ``flat`` replaced; the result is re-validated."""
    if not flat:
        return cfg
    tree = to_dict(cfg)
    for dotted, value in flat.items():
        node = tree
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                options = list(node) if isinstance(node, dict) else []
                close = difflib.get_close_matches(part, options, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"not a config key{hint}", key=".".join(parts[: i + 1]))
            if i == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise ConfigError("is a section, not a value", key=dotted)
                node[part] = value
            else:
                node = node[part]
    return from_dict(Config, tree)


def parse_set_args(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a.b": 1, "c": ["x", "y"]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"cannot parse value {text!r}", key=key.strip()) from None
    return out


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = _join(prefix, key)
        if isinstance(value, dict):
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


# ---------------------------------------------------------------------------- paths


def path_keys(cls: type | None = None, prefix: str = "") -> dict[str, str]:
    """Dotted key -> kind (``input``, ``input_or_tag``, ``cache``) of every path-valued
    field of the config tree, from the ``path`` marker in each field's metadata."""
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(path_keys(hints[f.name], key))
        elif "path" in f.metadata:
            out[key] = f.metadata["path"]
    return out


def is_path(kind: str, value: Any) -> bool:
    """Whether ``value`` of a field of this kind names a path (``null``, ``none`` or a tag
    such as ``openai`` does not)."""
    if not isinstance(value, str) or not value:
        return False
    if kind == "input_or_tag":
        from handreid.models.weights import is_checkpoint_path

        return value != "none" and is_checkpoint_path(value)
    return True


def absolute_path(kind: str, value: Any) -> Any:
    """``value`` with ``~`` expanded and made absolute against the working folder."""
    return str(Path(value).expanduser().resolve()) if is_path(kind, value) else value


def absolute_overrides(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted overrides with every path-valued one made absolute."""
    kinds = path_keys()
    return {k: absolute_path(kinds[k], v) if k in kinds else v for k, v in flat.items()}


def absolute_paths(cfg: Config) -> Config:
    """``cfg`` with every path-valued field made absolute."""
    values = flatten(to_dict(cfg))
    return apply_overrides(cfg, absolute_overrides({k: values[k] for k in path_keys()}))


def missing_paths(cfg: Config) -> list[str]:
    """One line per input path that does not exist, naming its key."""
    values = flatten(to_dict(cfg))
    return [
        f"{key}: {values[key]} does not exist"
        for key, kind in path_keys().items()
        if kind != "cache" and is_path(kind, values[key]) and not Path(values[key]).exists()
    ]

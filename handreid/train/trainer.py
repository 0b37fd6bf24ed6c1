"""The two-stage trainer: ``train(cfg, out_dir, report=...) -> dict``.

Stage 1 learns the prompt context on cached image features (or reuses it from the
stage-1 cache); stage 2 fine-tunes the image tower and the heads with the enabled losses
on PK batches against per-class text features computed once. After every stage-2 epoch
the model is scored on the validation images, early stopping is checked, the resumable
state is written when due (``train.checkpoint_every``) and ``report`` is called. Test data
is read only by :func:`evaluate_test`, after training.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from handreid.config import Config, dump_config, to_dict
from handreid.data.build import build_split, cache_root, resolve_root
from handreid.data.splits import DataSplit, save_manifest
from handreid.eval.evaluator import evaluate_protocol, evaluate_val, extract_features
from handreid.losses import LossInputs, build_loss_set
from handreid.models.model import build_model
from handreid.train import checkpoint as ckpt
from handreid.train.checkpoint import (
    BEST,
    CHECKPOINT,
    METRICS,
    Progress,
    check_same_config,
    write_json,
)
from handreid.train.data import RunData
from handreid.train.early_stopping import bad_epochs, first_judged_epoch, should_stop
from handreid.train.optim import make_optimizer, make_scheduler, stage2_groups, warmup_epochs
from handreid.train.stage1 import ConfigReads, cached_stage1, stage1_key, train_prompts

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], Path | None], None]


class Diverged(Exception):
    pass


def _release_accelerator_state(mixed_precision: str, cpu: bool) -> None:
    """Accelerate keeps one precision per process; a process that trains several runs (the
    tests, a reused Ray worker) may need another one. Single-process only: nothing to tear
    down beyond Accelerate's own record."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != mixed_precision or cpu):
        AcceleratorState._reset_state(reset_partial_state=True)


def configure_backends(device: torch.device) -> None:
    """On CUDA, cuDNN benchmarks its kernels once: every batch has the same input size."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


# what a run holds that close() lets go of
RUN_STATE = (
    "model",
    "losses",
    "optimizer",
    "center_opt",
    "scheduler",
    "data",
    "text_feats",
    "pending_best",
    "accelerator",
)


class Trainer:
    def __init__(self, cfg: Config, out_dir: str | Path, report: Report | None = None):
        self.cfg = cfg
        # what stage 1 reads goes through this view: the key of its cache is what it records
        self.stage1_cfg = s1 = ConfigReads(cfg)
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.report = report
        _release_accelerator_state(s1.train.mixed_precision, s1.train.cpu)
        self.accelerator = Accelerator(
            cpu=s1.train.cpu,
            mixed_precision=s1.train.mixed_precision,
            gradient_accumulation_steps=s1.train.grad_accum,
        )
        self.device = self.accelerator.device
        configure_backends(self.device)
        self.progress = Progress()
        self.pending_best: dict[str, Any] | None = None  # best.pt not yet written
        self.stage1_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        """The split, the model and the data: what both stages and the evaluation use."""
        cfg, s1 = self.cfg, self.stage1_cfg
        set_seed(s1.train.seed)
        # stage 1 reads the split's train items and their images: its key holds those
        self.root = resolve_root(cfg.data)
        self.split: DataSplit = build_split(cfg.data, cfg.eval, root=self.root)
        save_manifest(self.split, self.out / "split.json", root=str(self.root))
        dump_config(cfg, self.out / "config.yaml")  # after check_same_config in run()
        self.labels = self.split.labels()
        m = s1.model
        self.model = build_model(
            m.backbone,
            len(self.labels),
            pretrained=m.pretrained,
            cache_dir=m.cache_dir,
            n_ctx=m.n_ctx,
            templates=m.templates,
            # not stage 1's: it trains on the unit pre-BN feature, whatever is retrieved
            retrieval_feature=cfg.model.retrieval_feature,
            activation=m.activation,
        )
        self.model.to(self.device)
        self.data = RunData(
            s1,
            self.root,
            self.split,
            self.labels,
            self.model.preprocess,
            pin_memory=self.device.type == "cuda",
        )

    def features(self, loader: DataLoader, *, desc: str, **kw) -> torch.Tensor:
        """Features under the run's autocast (bf16 on the GPU), returned as fp32."""
        model = self.accelerator.unwrap_model(self.model)
        with self.accelerator.autocast():
            return extract_features(model, loader, self.device, desc=desc, **kw)

    # ------------------------------------------------------------------ stage 1

    def stage1_inputs(self) -> tuple[str, dict[str, Any]]:
        """Stage 1's settings, read through ``stage1_cfg``, and the cache key of all it read
        (from the start of the run: the accelerator, the model, the evaluation loaders)."""
        s1, loader = self.stage1_cfg, self.data.gallery_loader  # its settings read here
        t, o = s1.train, s1.optim
        settings = {
            "epochs": t.stage1_epochs,
            "batch_size": t.stage1_batch_size,
            "lr": o.lr_prompt,
            "weight_decay": o.weight_decay_prompt,
            "optimizer": o.name,
            "temperature": t.stage1_temperature,
            "seed": t.seed,
        }
        key = stage1_key(s1.reads, self.split.train, images=self.root, device=self.device)
        return key, {"loader": loader, **settings}

    def stage1(self) -> None:
        cfg = self.cfg
        cache_dir = Path(cfg.train.stage1_cache or cache_root() / "stage1")
        key, settings = self.stage1_inputs()
        loader = settings.pop("loader")

        def compute() -> dict[str, Any]:
            with self.stage1_cfg.sealed():  # a read the key does not hold raises
                # the unit pre-BN feature that stage 2's SupCon uses, whatever is retrieved
                feats = self.features(loader, desc="stage-1 features", kind="unit")
                labels = torch.tensor(self.data.gallery_set.targets)
                history = train_prompts(
                    self.model, feats, labels, accelerator=self.accelerator, **settings
                )
            return {"ctx": self.model.prompt.ctx.detach().cpu(), "loss": history}

        start = time.time()
        if cfg.train.stage1_reuse:
            result, hit = cached_stage1(cache_dir, key, compute)
        else:
            result, hit = compute(), False
        with torch.no_grad():
            self.model.prompt.ctx.copy_(result["ctx"].to(self.device))
        self.stage1_info = {
            "stage1_key": key,
            "stage1_cache": "hit" if hit else "miss",
            "stage1_seconds": time.time() - start,
        }
        log.info(
            "stage 1 %s (%s) in %.1fs",
            "reused" if hit else "computed",
            key,
            self.stage1_info["stage1_seconds"],
        )

    # ------------------------------------------------------------------ stage 2

    def setup_stage2(self) -> None:
        cfg = self.cfg
        self.losses = build_loss_set(cfg.loss, self.model.embed_dim, len(self.labels))
        self.losses.to(self.device)
        self.model.set_stage(2, cfg.model.unfreeze_blocks)
        groups = stage2_groups(self.model, self.losses, cfg.optim)
        self.optimizer = make_optimizer(cfg.optim.name, groups)
        centers = self.losses.center_parameters()
        self.center_opt = torch.optim.SGD(centers, lr=cfg.loss.center.lr) if centers else None
        steps_per_epoch = max(1, len(self.data.train_loader))
        self.scheduler = make_scheduler(
            self.optimizer,
            cfg.optim.scheduler,
            total_steps=cfg.train.epochs * steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=cfg.optim.warmup_epochs,
            step_epochs=cfg.optim.step_epochs,
            gamma=cfg.optim.gamma,
        )
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.center_opt is not None:
            self.center_opt = self.accelerator.prepare(self.center_opt)
        model = self.accelerator.unwrap_model(self.model)
        self.state_keys = ckpt.trainable_keys(model)  # what a checkpoint holds
        self.fingerprint = ckpt.frozen_fingerprint(model, self.state_keys)

    @torch.no_grad()
    def compute_text_features(self) -> None:
        """Per-class text features from the (frozen) learned prompts, computed once."""
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        classes = torch.arange(len(self.labels), device=self.device)
        self.text_feats = model.encode_text(classes).float()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, acc = self.cfg, self.accelerator
        self.model.train()
        self.losses.train()
        self.data.sampler.set_epoch(epoch)
        # main-process randomness restarts from (seed, epoch); the augmentations, in the loader's
        # workers or not, are seeded per draw by the sampler (SeededDraws): both replay on resume
        torch.manual_seed(cfg.train.seed * 100_003 + epoch)
        sums: dict[str, torch.Tensor] = {}  # on the device: no host sync per step
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        seen, start = 0, time.time()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        model = acc.unwrap_model(self.model)
        for images, labels, _ in tqdm(
            self.data.train_loader, desc=f"epoch {epoch}", leave=False, disable=None
        ):  # no bars when not on a terminal
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with acc.autocast():
                out = model.encode_image(images)
                inputs = LossInputs(
                    out.feat.float(),
                    out.bn_feat.float(),
                    out.unit.float(),
                    self.text_feats[labels],
                    labels,
                )  # the losses compute in fp32 whatever the autocast
                loss, parts = self.losses(inputs)
            nonfinite |= ~torch.isfinite(loss.detach())
            acc.backward(loss)
            if cfg.optim.grad_clip > 0:
                acc.clip_grad_norm_(params, cfg.optim.grad_clip)  # before the step
            self.optimizer.step()
            self._step_centers()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            seen += len(labels)
            for name, value in {"loss": loss, **parts}.items():
                key = name if name == "loss" else f"loss_{name}"
                sums[key] = sums.get(key, 0.0) + value.detach().float() * len(labels)
        if nonfinite:  # one check per epoch; the epoch's weights are not kept
            raise Diverged(f"non-finite loss at epoch {epoch}")
        seconds = time.time() - start
        stats = {k: float(v) / max(seen, 1) for k, v in sums.items()}
        stats.update(epoch_seconds=seconds, images_per_second=seen / max(seconds, 1e-9))
        for group in self.optimizer.param_groups:
            stats[f"lr_{group.get('name', 'group')}"] = group["lr"]
        return stats

    def _step_centers(self) -> None:
        if self.center_opt is None:
            return
        weight = self.cfg.loss.center.weight
        if weight > 0:  # undo the loss weight so the centers move at center_lr
            for p in self.losses.center_parameters():
                if p.grad is not None:
                    p.grad.mul_(1.0 / weight)
        self.center_opt.step()
        self.center_opt.zero_grad(set_to_none=True)

    def validate(self) -> dict[str, float]:
        val = self.features(self.data.val_loader, desc="val")
        gal = self.features(self.data.gallery_loader, desc="gallery")
        m = evaluate_val(val, self.split.val, gal, self.split.train)
        return {"val_mAP": m["mAP"], "val_rank1": m["rank1"]}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": ckpt.trainable_state(
                self.accelerator.unwrap_model(self.model), self.state_keys
            ),
            "fingerprint": self.fingerprint,
            "losses": self.losses.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "center_opt": self.center_opt.state_dict() if self.center_opt else None,
            "scheduler": self.scheduler.state_dict(),
            "progress": self.progress.__dict__,
            "rng": ckpt.rng_state(),
            "stage1": self.stage1_info,
            "config": to_dict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ckpt.check_fingerprint(state.get("fingerprint"), self.fingerprint)
        ckpt.load_trainable(self.accelerator.unwrap_model(self.model), state["model"])
        self.losses.load_state_dict(state["losses"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.center_opt is not None and state["center_opt"] is not None:
            self.center_opt.load_state_dict(state["center_opt"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        ckpt.set_rng_state(state["rng"])
        self.stage1_info = {**state.get("stage1", {}), "resumed_from_epoch": self.progress.epoch}

    def best_state(self) -> dict[str, Any]:
        """``best.pt``'s content: the epoch's trainable tensors, copied to host memory."""
        model = self.accelerator.unwrap_model(self.model)
        tensors = ckpt.trainable_state(model, self.state_keys)
        return {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()},
            "fingerprint": self.fingerprint,
            "losses": {
                k: v.detach().to("cpu", copy=True) for k, v in self.losses.state_dict().items()
            },
            "progress": {"epoch": self.progress.epoch},
        }

    def save_best(self, checkpoint: Path | None = None) -> None:
        """``best.pt`` now: ``checkpoint`` itself (a hard link), else the tensors alone."""
        if checkpoint is not None:
            ckpt.atomic_link(checkpoint, self.out / BEST)
        else:
            ckpt.atomic_save(self.best_state(), self.out / BEST)

    def save_epoch(self, improved: bool) -> Path | None:
        """Write what this epoch must: the resumable state when it is due
        (:func:`~handreid.train.checkpoint.checkpoint_due`), returned; ``best.pt`` as that
        state itself when the epoch improved (a hard link: no bytes written), else as the
        best epoch's tensors, held in host memory since that epoch and written before the
        state that names it. Between states nothing is written: a failure resumes from the
        last state and replays the epochs after it exactly, the best one included. With
        ``train.keep_checkpoints`` off only ``best.pt`` is written, at each improvement."""
        t, p = self.cfg.train, self.progress
        if not t.keep_checkpoints:
            if improved:
                self.save_best()
            return None
        if improved:
            self.pending_best = None
        if not ckpt.checkpoint_due(t, p.epoch, p.status):
            if improved:
                self.pending_best = self.best_state()
            return None
        path = self.out / CHECKPOINT
        if self.pending_best is not None:  # first: the state written next names it
            ckpt.atomic_save(self.pending_best, self.out / BEST)
            self.pending_best = None
        ckpt.atomic_save(self.state_dict(), path)
        if improved:
            self.save_best(path)
        return path

    def close(self) -> None:
        """Free the run's model, optimisers, loaders and Accelerate's references to them, and
        return the freed GPU memory: a process that trains another run next (a reused Ray
        actor) must not carry this one. Under mixed precision Accelerate wraps the model's
        forward in a reference cycle (instance attributes bound to the model), which only the
        cyclic collector would break, at a time of its choosing: those attributes go first,
        so that dropping the references frees everything at once, without a collection
        (tests/test_clean_actor.py checks it with the collector off)."""
        for name in ("forward", "_original_forward"):
            getattr(self, "model", nn.Module()).__dict__.pop(name, None)
        for name in RUN_STATE:
            self.__dict__.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ loop

    def fit(self) -> str:
        """Stage 2 epochs from the current progress; returns the final status."""
        cfg, p = self.cfg, self.progress
        while p.status == "running" and p.epoch < cfg.train.epochs:
            epoch = p.epoch + 1
            stats = self.train_epoch(epoch)
            stats.update(self.validate())
            p.epoch = epoch
            improved = stats["val_mAP"] > p.best_map
            if improved:
                p.best_map, p.best_epoch = stats["val_mAP"], epoch
            stop = self._early_stop(stats["val_mAP"])
            p.status = (
                "early_stopped" if stop else ("done" if epoch == cfg.train.epochs else "running")
            )
            row = {
                "epoch": epoch,
                **stats,
                "best_val_mAP": p.best_map,
                "best_epoch": p.best_epoch,
                "status": p.status,
            }
            p.history.append(row)
            self._write_history()
            path = self.save_epoch(improved)  # the state when due: what `report` hands on
            self._report(row, path)
            log.info(
                "epoch %d  loss %.4f  val mAP %.2f  rank-1 %.2f  (%.1f img/s)",
                epoch,
                stats["loss"],
                stats["val_mAP"],
                stats["val_rank1"],
                stats["images_per_second"],
            )
        return p.status if p.status != "running" else "done"

    def _early_stop(self, val_map: float) -> bool:
        """Count this epoch against patience unless it is inside the warm-up (or before
        ``train.patience_after``); True when the run stops here."""
        o, t = self.cfg.optim, self.cfg.train
        start = first_judged_epoch(
            warmup_epochs(o.scheduler, o.warmup_epochs, t.epochs), t.patience_after, t.epochs
        )
        curve = [row["val_mAP"] for row in self.progress.history] + [val_map]
        self.progress.bad_epochs = bad_epochs(curve, start)
        return should_stop(curve, t.patience, start)

    def _report(self, row: dict[str, Any], path: Path | None) -> None:
        if self.report is not None:
            self.report(dict(row), path)

    def _write_history(self) -> None:
        rows = self.progress.history
        keys = list(dict.fromkeys(k for r in rows for k in r))
        tmp = self.out / "history.csv.tmp"
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.out / "history.csv")

    def run(self) -> dict[str, Any]:
        resume = self.out / CHECKPOINT
        state = ckpt.load(resume) if resume.is_file() else None
        if state is not None:  # before setup() writes this run's config.yaml
            check_same_config(self.cfg, self.out, state)
        self.setup()
        if state is None:
            self.stage1()
        self.setup_stage2()
        if state is not None:
            self.load_state_dict(state)
            log.info("resumed %s after epoch %d", self.out, self.progress.epoch)
        self.compute_text_features()
        status = self.fit()
        return self.summary(status)

    def summary(self, status: str, error: str | None = None) -> dict[str, Any]:
        p = self.progress
        best = next((r for r in p.history if r["epoch"] == p.best_epoch), {})
        return {
            "status": status,
            "error": error,
            "epochs": p.epoch,
            "best_epoch": p.best_epoch,
            "val_mAP": best.get("val_mAP", float("nan")),
            "val_rank1": best.get("val_rank1", float("nan")),
            "num_classes": len(getattr(self, "labels", {})),
            **self.stage1_info,
        }


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    report: Report | None = None,
    evaluate_on_test: bool = True,
    raise_oom: bool = False,
) -> dict[str, Any]:
    """Train one configuration; returns (and writes to ``metrics.json``) its results.

    Divergence (a non-finite loss) and running out of GPU memory end the run with
    status ``diverged`` / ``oom`` instead of raising; the last ``report`` says so too.
    With ``raise_oom`` (a search trial) running out of memory raises instead: the cause may
    be a neighbour on a shared GPU, and Tune then retries the trial from its last
    checkpoint (``max_failures``).
    """
    trainer = Trainer(cfg, out_dir, report)
    try:
        try:
            result = trainer.run()
        except Diverged as err:
            result = _failed(trainer, "diverged", str(err))
        except torch.OutOfMemoryError:
            msg = f"out of memory at batch_size={cfg.train.batch_size}; lower train.batch_size"
            if raise_oom:
                raise
            result = _failed(trainer, "oom", msg)
        if evaluate_on_test and result["status"] in ("done", "early_stopped"):
            result["test"] = evaluate_test(cfg, out_dir, trainer=trainer)
    finally:
        trainer.close()
    write_json(Path(out_dir) / METRICS, result)
    return result


def _failed(trainer: Trainer, status: str, message: str) -> dict[str, Any]:
    log.warning("run %s: %s", status, message)
    result = trainer.summary(status, message)
    trainer._report(
        {
            "epoch": trainer.progress.epoch,
            "status": status,
            "error": message,
            "best_val_mAP": trainer.progress.best_map,
            "val_mAP": float("nan"),
        },
        None,
    )
    return result


def evaluate_test(cfg: Config, out_dir: str | Path, *, trainer: Trainer | None = None) -> dict:
    """The test protocol on the best checkpoint: features once, then every split."""
    out = Path(out_dir)
    if trainer is None:  # a run scored on its own: its trainer is freed afterwards
        trainer = Trainer(cfg, out)
        try:
            trainer.setup()
            return evaluate_test(cfg, out, trainer=trainer)
        finally:
            trainer.close()
    model = trainer.accelerator.unwrap_model(trainer.model)
    best = ckpt.load(out / BEST)
    ckpt.check_fingerprint(
        best.get("fingerprint"), ckpt.frozen_fingerprint(model, list(best["model"]))
    )
    ckpt.load_trainable(model, best["model"])
    protocol = trainer.split.test
    test_set = trainer.data.eval_dataset(protocol.images)
    loader = trainer.data.plain_loader(test_set)
    feats = trainer.features(loader, flip=cfg.eval.flip_tta, desc="test")
    result = evaluate_protocol(feats, protocol)
    result["protocol"] = cfg.eval.protocol
    return result

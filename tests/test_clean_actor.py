"""A process that trains several runs (a reused Ray actor, the tests) holds nothing of the
runs before: each run frees its model, optimisers and Accelerate's wrappers when it ends."""

from __future__ import annotations

import gc
import weakref

import handreid.train.trainer as trainer_module
from handreid.models.model import HandReIDModel
from handreid.train.trainer import train


def test_two_runs_in_one_process_leave_nothing_of_the_first_alive(tiny_cfg, tmp_path, monkeypatch):
    built: list[weakref.ref] = []

    def recording(build):
        def wrapped(*args, **kwargs):
            obj = build(*args, **kwargs)
            built.append(weakref.ref(obj))
            return obj

        return wrapped

    monkeypatch.setattr(trainer_module, "build_model", recording(trainer_module.build_model))
    monkeypatch.setattr(trainer_module, "make_optimizer", recording(trainer_module.make_optimizer))
    # bf16: Accelerate wraps the model's forward in a reference cycle (model -> forward ->
    # model), which only the cyclic collector would break; with it off, what is not freed
    # by the run itself stays
    cfg = tiny_cfg(**{"train.mixed_precision": "bf16", "train.epochs": 1, "train.stage1_epochs": 1})
    gc.collect()
    gc.disable()
    try:
        train(cfg, tmp_path / "first")  # scored on test too: its evaluation's model as well
        first = list(built)
        train(cfg, tmp_path / "second", evaluate_on_test=False)
        alive = [ref() for ref in built if ref() is not None]
        models = sum(type(o) is HandReIDModel for o in gc.get_objects())
    finally:
        gc.enable()
    assert len(first) >= 2 and len(built) > len(first)  # a model and an optimiser each
    assert not alive, [type(o).__name__ for o in alive]
    assert models == 0

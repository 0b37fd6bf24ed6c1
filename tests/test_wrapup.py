"""A top-k test evaluation that fails is recorded for its trial; the wrap-up goes on."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_small():
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_failed_evaluation_is_recorded_and_the_others_kept(ray_small):
    from handreid.errors import HandReIDError
    from search.scoring import test_metrics

    @ray.remote
    def evaluate(ok: bool):
        if not ok:
            raise HandReIDError("best.pt of trial b is missing\nmore detail")
        return {"mAP": 50.0}

    assert test_metrics(evaluate.remote(True), "a") == {"mAP": 50.0}
    failed = test_metrics(evaluate.remote(False), "b")
    assert failed == {"error": "HandReIDError: best.pt of trial b is missing"}

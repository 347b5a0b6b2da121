"""Routing: one rule for queues, and one for saying that nobody serves a queue."""

from __future__ import annotations

from shared.routing import predict_queue, train_queue, waiting_reason, worker_queues
from tests.helpers import ROOT


def test_a_job_waits_with_the_reason_only_where_no_online_worker_serves_its_queue() -> None:
    queue = train_queue("a100", 1, 40)
    served = worker_queues("a100", 1, 80, ("train", "predict"))
    assert waiting_reason(queue, served) is None
    assert waiting_reason(predict_queue("a100"), served) is None
    assert waiting_reason(train_queue("a100", 2, 40), served) == (
        "waiting on queue train.a100.d2.m40: no online worker serves it"
    )


def test_the_reason_is_written_in_one_place() -> None:
    writers = [
        path.relative_to(ROOT)
        for package in ("api", "shared", "workers", "ops")
        for path in (ROOT / package).rglob("*.py")
        if "no online worker serves" in path.read_text()
    ]
    assert [str(p) for p in writers] == ["shared/routing.py"]


def test_a_plugin_family_has_queues_that_only_its_workers_consume() -> None:
    assert train_queue("default", 1, 0, "mlp") == "train.default.d1.m0"
    assert train_queue("default", 1, 0, "resmlp") == "train.default.d1.m0.resmlp"
    assert predict_queue("default", "resmlp") == "predict.default.resmlp"
    without = worker_queues("default", 1, 8, ("train", "predict"), ["mlp", "text_lstm"])
    assert without == ["train.default.d1.m0", "train.default.d1.m8", "predict.default"]
    with_it = worker_queues("default", 1, 8, ("train", "predict"), ["mlp", "resmlp"])
    assert set(with_it) == {*without, "train.default.d1.m0.resmlp", "train.default.d1.m8.resmlp",
                            "predict.default.resmlp"}  # fmt: skip
    queue = train_queue("default", 1, 0, "resmlp")
    assert waiting_reason(queue, without, "resmlp") == (
        "waiting on queue train.default.d1.m0.resmlp: no online worker has family 'resmlp' "
        "(a plugin: install it on this pool's workers)"
    )
    assert waiting_reason(queue, with_it, "resmlp") is None

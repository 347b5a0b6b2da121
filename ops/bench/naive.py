"""The naive Celery baseline: a tiny app with a ``noop`` task and a ``predict_one`` task
(the model built once per worker process, kept in a module-level cache), JSON only, the
Redis result backend. The suite starts its worker:

    python -m celery -A ops.bench.naive worker --pool threads -c 4 -Q bench
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery

URL = os.environ.get("TORCHQUEUE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/1")
QUEUE = "bench"

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=60,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

_models: dict[str, Any] = {}
_lock = threading.Lock()


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.predict_one")
def predict_one(family: str, inputs: list[Any]) -> list[list[float]]:
    from ops.bench import models

    with _lock:
        if family not in _models:
            import torch

            torch.set_num_threads(int(os.environ.get("TORCHQUEUE_TORCH_THREADS", "1") or 1))
            _models[family] = models.build(family)
    pre, model = _models[family]
    return models.predict(pre, model, inputs)

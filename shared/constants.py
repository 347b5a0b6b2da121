"""Queue names, task names and Redis keys: every name that crosses a process lives here."""

from __future__ import annotations

# Training and prediction never share a queue: a short prediction never waits behind
# an hour of training.
QUEUE_TRAIN = "train"
QUEUE_PREDICT = "predict"

TASK_TRAIN = "torchqueue.train"
TASK_PREDICT = "torchqueue.predict"

# Kombu keeps its own keys in the broker database; ours carry this prefix.
REDIS_PREFIX = "torchqueue:"
# Published when a job ends, so that a caller waiting for it wakes at once.
JOB_DONE_CHANNEL = REDIS_PREFIX + "job-done:"

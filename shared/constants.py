"""Queue names, task names and Redis keys: every name that crosses a process lives here."""

from __future__ import annotations

# Training and prediction never share a queue: a short prediction never waits behind
# an hour of training.
QUEUE_TRAIN = "train"
QUEUE_PREDICT = "predict"

# Webhook deliveries: short HTTP calls, on a queue (and a worker) of their own.
QUEUE_WEBHOOKS = "webhooks"

TASK_TRAIN = "torchqueue.train"
TASK_DELIVER = "torchqueue.webhooks.deliver"
TASK_PREDICT = "torchqueue.predict"
# A batch of sync predictions, coalesced by the API (``shared.schemas.ServeBatch``).
TASK_SERVE = "torchqueue.serve"

# Kombu keeps its own keys in the broker database; ours carry this prefix.
REDIS_PREFIX = "torchqueue:"
# Published when a job ends, so that a caller waiting for it wakes at once.
JOB_DONE_CHANNEL = REDIS_PREFIX + "job-done:"
# Outputs of served predictions, for the API process that waits for them.
REPLY_CHANNEL = REDIS_PREFIX + "reply:"
# A batch of sync predictions sent straight to a prediction worker's own consumer (not
# through Celery) waits in the Redis list named after its queue with this suffix, and the
# worker that takes it keeps it in its own list (prefix and worker name) until the
# records of its predictions are committed.
DIRECT_SUFFIX = ":direct"
DIRECT_TAKEN = REDIS_PREFIX + "serve-taken:"
# A serve message's header listing the jobs it carries (for the reaper).
JOBS_HEADER = "torchqueue_jobs"
# A job message's header when the job is sent again: it goes to the front of its priority
# level (``shared.transport``).
JOB_FIRST_HEADER = "torchqueue_first"

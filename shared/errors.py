"""The one error hierarchy, and the one shape of an error: ``{"type", "detail", "field"}``
(``field`` where there is one), from ``to_dict``. The API answers with it in one handler
(``api.errors``); a failed job keeps it as its ``error``.

TorchqueueError                 500  internal_error (never shown with a traceback)
├── InvalidSpec                 422  invalid_spec: a request that cannot run; names `field`
├── Unauthorized                401  unauthorized: no API key, or not a valid one
├── Forbidden                   403  forbidden: the key lacks the scope the route needs
├── NotFound                    404  not_found: a job, model or version that does not exist
├── Conflict                    409  conflict: a state that forbids the request
├── TooLarge                    413  too_large: a request body over the limit
├── Unavailable                 503  unavailable: the database or the broker cannot be reached
│                                    (a worker that cannot claim its job retries it later)
└── JobError                         why a job failed; stored on the job, never raised over HTTP
    ├── BadData                      bad_data: the data set cannot be used
    ├── SpecRefused                  invalid_spec: the family's own code refused the job's
    │                                parameters or size on the worker; names `field`
    ├── NonFiniteLoss                nan_loss: training diverged
    ├── ModelLoadError               model_load_error: a missing or tampered artifact
    ├── OutOfMemory                  out_of_memory: the device (or the host) ran out of memory
    ├── WorkerLost                   worker_lost: its workers stopped renewing its lease, and
    │                                it has no attempts left
    └── JobCrashed                   internal_error: an unexpected exception in the job
"""

from __future__ import annotations


class TorchqueueError(Exception):
    status = 500
    type = "internal_error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = {"type": self.type, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidSpec(TorchqueueError):
    status = 422
    type = "invalid_spec"


class Unauthorized(TorchqueueError):
    status = 401
    type = "unauthorized"


class Forbidden(TorchqueueError):
    status = 403
    type = "forbidden"


class TooLarge(TorchqueueError):
    status = 413
    type = "too_large"


class NotFound(TorchqueueError):
    status = 404
    type = "not_found"


class Conflict(TorchqueueError):
    status = 409
    type = "conflict"


class Unavailable(TorchqueueError):
    status = 503
    type = "unavailable"


class JobError(TorchqueueError):
    type = "job_error"


class BadData(JobError):
    type = "bad_data"


class SpecRefused(JobError):
    type = "invalid_spec"


class NonFiniteLoss(JobError):
    type = "nan_loss"


class ModelLoadError(JobError):
    type = "model_load_error"


class OutOfMemory(JobError):
    type = "out_of_memory"


class WorkerLost(JobError):
    type = "worker_lost"


class JobCrashed(JobError):
    type = "internal_error"

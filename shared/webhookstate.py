"""A webhook delivery's states as data; ``shared.db.webhooks`` applies them.

(born with its event) ──▶ pending ──▶ delivered   (the receiver answered 2xx)
                             │  ▲
                             └──┘ an attempt failed: tried again later, doubling
                             └──▶ failed        (given up after a day, or a URL refused)
"""

from __future__ import annotations

import enum


class DeliveryState(enum.StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "model.version.created",
          "sweep.finished")  # fmt: skip

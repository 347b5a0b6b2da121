"""Which queue a job goes to, and which queues a worker consumes: one rule, both sides.

A training job's queue names its pool, how many devices it needs and a memory tier:
``train.<pool>.d<devices>.m<tier>``. A worker whose group has N devices of M GB each, in
pool P, consumes ``train.P.dN.m<t>`` for every tier t up to M, so a job lands only on a
worker that owns exactly the devices it asked for, with at least the memory it asked
for. Predictions go to ``predict.<pool>``: they never wait behind training.

A plugin's family has queues of its own, the same names with the family's after them
(``train.P.dN.m<t>.<family>``, ``predict.P.<family>``), which only workers that loaded
it consume: a job never reaches a worker without its family. The built-in families are
the worker's own code, which every worker has: their jobs take the plain queues.
"""

from __future__ import annotations

from collections.abc import Collection

from shared.constants import DIRECT_SUFFIX, QUEUE_PREDICT, QUEUE_TRAIN
from shared.errors import InvalidSpec
from shared.families import FAMILIES

# Device memory tiers in GB (the common sizes of data-centre GPUs); a job's minimum rounds
# up to a tier, a worker's memory down.
MEMORY_TIERS_GB = (0, 8, 16, 24, 32, 40, 48, 80, 96, 141, 192)
DEFAULT_POOL = "default"
# What a pool may be called: it becomes part of queue names.
POOL_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
PRIORITY_LEVELS = 10
# A sync prediction waits in front of everything else in its queue.
SERVE_PRIORITY = 9


def memory_tier(min_gb: float) -> int:
    for tier in MEMORY_TIERS_GB:
        if min_gb <= tier:
            return tier
    raise InvalidSpec(
        f"no device tier has {min_gb} GB; the largest is {MEMORY_TIERS_GB[-1]} GB",
        field="resources.min_device_memory_gb",
    )


def _of(queue: str, family: str | None) -> str:
    """``queue`` for a job of ``family``: a plugin's family has its own (see above)."""
    return queue if family is None or family in FAMILIES else f"{queue}.{family}"


def train_queue(
    pool: str, devices: int, min_device_memory_gb: float, family: str | None = None
) -> str:
    tier = memory_tier(min_device_memory_gb)
    return _of(f"{QUEUE_TRAIN}.{pool}.d{devices}.m{tier}", family)


def predict_queue(pool: str, family: str | None = None) -> str:
    return _of(f"{QUEUE_PREDICT}.{pool}", family)


def direct_queue(queue: str) -> str:
    """The list a prediction worker's own consumer takes ``queue``'s batches from; online
    workers list it among their queues when they consume it (``served_queues``)."""
    return queue + DIRECT_SUFFIX


def worker_queues(
    pool: str,
    devices: int,
    device_memory_gb: float,
    kinds: tuple[str, ...],
    families: Collection[str] = (),
) -> list[str]:
    """The queues a worker serves, for the built-in families and the plugins' among
    ``families`` (those it loaded). A CPU worker counts as one device with no tier."""
    own = [None, *sorted(f for f in families if f not in FAMILIES)]
    queues: list[str] = []
    if QUEUE_TRAIN in kinds:
        tiers = [t for t in MEMORY_TIERS_GB if t <= device_memory_gb]
        base = [f"{QUEUE_TRAIN}.{pool}.d{devices}.m{t}" for t in tiers]
        queues += [_of(q, f) for f in own for q in base]
    if QUEUE_PREDICT in kinds:
        queues += [predict_queue(pool, f) for f in own]
    return queues


def waiting_reason(queue: str, served: Collection[str], family: str | None = None) -> str | None:
    """Why a job sent to ``queue`` waits, when no online worker serves it (``served``: the
    queues online workers consume); None when one does. ``family``: a plugin's family,
    which only the workers that loaded it serve."""
    if queue in served:
        return None
    if family is not None and family not in FAMILIES:
        return (
            f"waiting on queue {queue}: no online worker has family '{family}' "
            "(a plugin: install it on this pool's workers)"
        )
    return f"waiting on queue {queue}: no online worker serves it"


def broker_priority(priority: int) -> int:
    """Our priorities run 0 (last) to 9 (first); the Redis transport serves 0 first."""
    return PRIORITY_LEVELS - 1 - priority

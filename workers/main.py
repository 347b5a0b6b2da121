"""Starting a worker pinned to one device group, or one per GPU (``--gpus all``):

    python -m workers.main (--gpus 0 | --gpus 2,3 | --gpus all | --cpu)
        [--queues train,predict] [--pool default] [--loglevel INFO]

which is what ``torchqueue worker`` runs. The group is pinned (CUDA_VISIBLE_DEVICES)
before anything imports torch. Training workers use the prefork pool with one child: the
child owns the device, the parent never touches CUDA and keeps heartbeats, control
commands and time limits alive. Prediction workers run each task in the consumer's own
thread (the solo pool): one process owns the device and the loaded models, the API has
already coalesced concurrent requests into batches of milliseconds, and a hand-off to a
pool thread costs more than it saves. The parent registers the worker in the database
(``workers.registration``); torch's thread count follows ``workers.threads``.
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
import sys
from typing import Any

from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from shared import logs, processes
from shared.constants import QUEUE_PREDICT, QUEUE_TRAIN, QUEUE_WEBHOOKS
from shared.families import OWN_PACKAGE
from shared.routing import DEFAULT_POOL, POOL_PATTERN, worker_queues
from workers import family_plugins, metrics, threads
from workers.devices import DeviceGroup, discover_gpus, parse_gpus
from workers.registration import Registration

log = logging.getLogger(__name__)
MAX_TASKS_PER_CHILD = 100
# A training child whose resident memory passes this after a job is replaced (leaks).
MAX_MEMORY_PER_CHILD_KB = 16 * 1024 * 1024


def _child_init(**_: Any) -> None:
    """In the prefork child as it starts: drop the database connections inherited from
    the parent (a socket shared by two processes corrupts both), and load torch and what
    training imports, so that the first job doesn't wait."""
    from shared.db.session import after_fork

    after_fork()
    threads.load_torch()
    # What the first training job would otherwise wait for (about 2 s): the optimizers'
    # fused paths load torch._dynamo, the built-in data sets scikit-learn.
    import sklearn.datasets  # noqa: F401
    import torch._dynamo  # noqa: F401


def _record_pending(**_: Any) -> None:
    """As a worker (or a prefork child) stops: record the served predictions still
    waiting to be written, and let its metrics' live figures go."""
    metrics.process_gone()
    if "workers.result_writer" in sys.modules:
        from workers.result_writer import close_writer

        close_writer()


def node_name(group: DeviceGroup, kinds: tuple[str, ...]) -> str:
    suffix = "" if QUEUE_TRAIN in kinds else "-predict"
    return f"{group.name}{suffix}@{socket.gethostname()}"


def role(group: DeviceGroup, kinds: tuple[str, ...]) -> str:
    """What its log lines call the worker: ``worker:train-cpu``, ``worker:predict-gpu0``."""
    return f"worker:{'train' if QUEUE_TRAIN in kinds else 'predict'}-{group.name}"


def _keep_our_logging(**_: Any) -> None:
    """Celery configures logging only when nobody answers its ``setup_logging`` signal:
    ``shared.logs`` has already done it."""


def worker_argv(name: str, queues: list[str], predict_only: bool, loglevel: str) -> list[str]:
    argv = [
        "worker",
        f"--hostname={name}",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
        "--events",
        "--without-mingle",
        "--without-gossip",
    ]
    if predict_only:
        return [*argv, "--pool=solo"]
    return [
        *argv,
        "--pool=prefork",
        "--concurrency=1",
        f"--max-tasks-per-child={MAX_TASKS_PER_CHILD}",
        f"--max-memory-per-child={MAX_MEMORY_PER_CHILD_KB}",
    ]


def _families() -> dict[str, family_plugins.Offered]:
    """The model families this worker offers (torch-free: this is the parent)."""
    from shared.config import get_settings

    found = family_plugins.discover(get_settings().family_plugins)
    offered = family_plugins.check_builders(found)
    log.info(
        "model families: %s",
        ", ".join(
            name if o.package == OWN_PACKAGE else f"{name} ({o.package} {o.version})"
            for name, o in sorted(offered.items())
        ),
    )
    return offered


# Deliveries in flight at once on a webhook worker: each mostly waits on the network.
WEBHOOK_THREADS = 8


def run_webhook_worker(loglevel: str = "INFO") -> None:
    """The worker of webhook deliveries: torch-free, a pool of threads, its own queue."""
    logs.configure("worker:webhooks", loglevel)
    setup_logging.connect(_keep_our_logging, weak=False)
    from shared.celery_app import get_celery

    app = get_celery()
    import workers.webhook_tasks  # noqa: F401  registers the task with the app

    name = f"webhooks@{socket.gethostname()}"
    argv = ["worker", f"--hostname={name}", f"--queues={QUEUE_WEBHOOKS}",
            f"--loglevel={loglevel}", "--without-mingle", "--without-gossip",
            "--pool=threads", f"--concurrency={WEBHOOK_THREADS}"]  # fmt: skip
    with Registration(name, DEFAULT_POOL, [QUEUE_WEBHOOKS], []):
        app.worker_main(argv)


def run_worker(
    group: DeviceGroup, kinds: tuple[str, ...], pool: str, loglevel: str = "INFO"
) -> None:
    unknown = set(kinds) - {QUEUE_TRAIN, QUEUE_PREDICT}
    if unknown or not kinds:
        raise ValueError(
            f"--queues takes {QUEUE_TRAIN} and/or {QUEUE_PREDICT}, or {QUEUE_WEBHOOKS} alone; "
            f"not {kinds}"
        )
    logs.configure(role(group, kinds), loglevel)
    setup_logging.connect(_keep_our_logging, weak=False)
    from shared.config import get_settings

    # Before any metric is made, here or in the pool's children (they inherit it).
    figures = metrics.prepare(get_settings().worker_metrics_port)
    devices = group.devices()
    group.pin()
    memory = min((d.memory_gb for d in devices), default=0.0)
    offered = _families()
    queues = worker_queues(pool, max(len(devices), 1), memory, kinds, offered)
    from shared.celery_app import get_celery

    app = get_celery()
    import workers.tasks  # noqa: F401  registers the tasks with the app

    predict_only = QUEUE_TRAIN not in kinds
    chosen = threads.choose(group, predict_only, len(discover_gpus()))
    log.info("torch threads per process: %s", chosen or "torch's default")
    name = node_name(group, kinds)
    direct = None
    if predict_only:  # no forked children: batches may run in this process's threads
        from workers.direct import DirectConsumer

        direct = DirectConsumer(name, queues)
        worker_shutdown.connect(direct.stop, weak=False)  # before the records are written
    # A full pass of the collector over torch's objects would stall a batch for as long.
    worker_ready.connect(lambda **_: processes.freeze_heap(), weak=False)
    worker_process_init.connect(_child_init, weak=False)
    worker_process_shutdown.connect(_record_pending, weak=False)
    worker_shutdown.connect(_record_pending, weak=False)
    if predict_only:
        threads.load_torch()
    infos = [o.info() for o in offered.values()]
    listed = queues + (direct.lists if direct is not None else [])
    with Registration(name, pool, listed, [d.to_json() for d in devices], infos):
        if direct is not None:
            direct.start()
        settings = get_settings()
        if figures is not None and settings.worker_metrics_port is not None:
            address, port = settings.worker_metrics_address, settings.worker_metrics_port
            metrics.serve(port, address, [d.index for d in devices])
        try:
            app.worker_main(worker_argv(name, queues, predict_only, loglevel))
        finally:
            metrics.cleanup(figures)


def start(gpus: str | None, queues: str, pool: str, loglevel: str = "INFO") -> int:
    """Run the worker for ``gpus`` ("0", "2,3"; None: the CPU), or with "all" one per GPU,
    taking the kinds of job named in ``queues`` ("train,predict"); raise ValueError when
    an argument is wrong. Returns the exit status."""
    kinds = tuple(q.strip() for q in queues.split(",") if q.strip())
    if kinds == (QUEUE_WEBHOOKS,):
        run_webhook_worker(loglevel)
        return 0
    if gpus == "all":
        from workers.per_gpu import run_all

        logs.configure("worker:per-gpu", loglevel)
        return run_all(kinds, pool, loglevel)
    run_worker(parse_gpus(gpus) if gpus else DeviceGroup(), kinds, pool, loglevel)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m workers.main",
        description="Run a Celery worker pinned to a GPU group or the CPU.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--gpus", help="GPU indices for one worker (0 or 2,3), or all: one each")
    where.add_argument("--cpu", action="store_true", help="run on the CPU")
    parser.add_argument("--queues", default="train,predict", help="train, predict or both")
    parser.add_argument("--pool", default=DEFAULT_POOL, help="the pool this worker serves")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    if not args.cpu and not args.gpus:
        parser.error("give exactly one of --gpus or --cpu")
    if not re.match(POOL_PATTERN, args.pool):
        parser.error("--pool: lower-case letters, digits and '-'")
    try:
        status = start(args.gpus, args.queues, args.pool, args.loglevel)
    except ValueError as exc:
        parser.error(str(exc))
    processes.exit_now(status)


if __name__ == "__main__":
    main()

"""Data-parallel training on the devices of one worker: ``resources.devices: N`` runs N
ranks with torch.distributed (NCCL on GPUs, gloo on the CPU), one process per device.

The worker's own process is rank 0, the leader: it holds the job's lease, writes the
checkpoints and registers the model. Ranks 1..N-1 are started here as processes of their
own (the worker's pool child may not fork children of its own), read the job's spec and
checkpoint, train their share of every batch and exit.

    python -m workers.distributed --rank R --world N --port P --job ID
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as tdist

from shared.artifacts import open_store
from shared.db import job_reads
from shared.db.session import session_scope
from shared.processes import free_port
from shared.schemas import TrainSpec
from workers.checkpoint import Checkpointer, checkpoint_key
from workers.rank import Dist
from workers.training import Hooks, Trained, train

TIMEOUT = timedelta(minutes=5)


def _device(rank: int, cuda: bool) -> torch.device:
    return torch.device("cuda", rank) if cuda else torch.device("cpu")


def _join(rank: int, world: int, port: int, cuda: bool) -> None:
    if cuda:
        torch.cuda.set_device(rank)
    tdist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=TIMEOUT,
    )


def train_parallel(spec: TrainSpec, job_id: str, hooks: Hooks, world: int, cuda: bool) -> Trained:
    """Rank 0 of ``world``: start the other ranks, train with them, and wait for them."""
    port = free_port()
    followers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.distributed",
                "--rank",
                str(rank),
                "--world",
                str(world),
                "--port",
                str(port),
                "--job",
                job_id,
            ],
            env={**os.environ, "TORCHQUEUE_RANK": str(rank)},
        )
        for rank in range(1, world)
    ]
    try:
        _join(0, world, port, cuda)
        try:
            trained = train(spec, device=_device(0, cuda), hooks=hooks, dist=Dist(0, world))
        finally:
            tdist.destroy_process_group()
    except BaseException:
        for proc in followers:
            proc.kill()
        raise
    finally:
        for proc in followers:
            proc.wait()
    failed = [p.returncode for p in followers if p.returncode not in (0, None)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {world - 1} other ranks failed: {failed}")
    return trained


def _follow(rank: int, world: int, port: int, job_id: str) -> int:
    from workers.devices import torch_device

    cuda = torch_device().type == "cuda"
    with session_scope() as s:
        spec = TrainSpec.model_validate(job_reads.get_job(s, job_id).spec)
    # The leader's checkpoint, read (resuming) but never written here.
    checkpoints = Checkpointer(open_store(), checkpoint_key(job_id))
    _join(rank, world, port, cuda)
    try:
        train(
            spec,
            device=_device(rank, cuda),
            hooks=Hooks(checkpointer=checkpoints),
            dist=Dist(rank, world),
        )
    except Exception as exc:  # the leader reports the job's outcome
        print(f"rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0 if type(exc).__name__ in ("Interrupted", "NonFiniteLoss") else 1
    finally:
        tdist.destroy_process_group()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="one follower rank of a data-parallel job")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--job", required=True)
    args = parser.parse_args()
    sys.exit(_follow(args.rank, args.world, args.port, args.job))


if __name__ == "__main__":
    main()

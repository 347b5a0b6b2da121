"""Training throughput, one epoch at a time, same model, data, batches and optimizer (the
fused kernels the training loop uses): a per-sample ``DataLoader`` over the tensors, a
plain loop slicing the tensors already in memory, and ``workers.training``'s own epoch
(blocks of contiguous rows, losses and scores tallied once per block, a cancel check
before every batch), and its per-epoch validation.

    .venv/bin/python -m ops.bench.train_loop [--epochs 5] [--threads 1]

Prints samples per second side by side, each the best of ``--epochs`` epochs, measured in
turns in the same run so that a busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from shared.schemas import TrainRequest
from shared.validation import resolve_train
from workers import training
from workers.rank import Dist
from workers.training import Prepared

CASES = {
    "mlp/digits": ("mlp", "digits", 64),
    "text_lstm/sentiment": ("text_lstm", "sentiment", 32),
    "text_transformer/sentiment": ("text_transformer", "sentiment", 32),
    "image_cnn/digits_images": ("image_cnn", "digits_images", 64),
}


def _setup(family: str, dataset: str, batch_size: int) -> Prepared:
    spec = resolve_train(
        TrainRequest.model_validate(
            {
                "model_name": "bench",
                "family": family,
                "dataset": {"builtin": dataset},
                "training": {"batch_size": batch_size},
            }
        )
    )
    return training.prepare(spec, torch.device("cpu"))


def _step(run: Prepared, xb: torch.Tensor, yb: torch.Tensor) -> None:
    run.opt.zero_grad(set_to_none=True)
    run.head.loss(run.net(xb), yb).backward()
    run.opt.step()


def in_memory(run: Prepared, bs: int) -> None:
    x, y = run.tr.x, run.tr.y
    run.net.train()
    perm = torch.randperm(len(x), generator=run.gen)
    for start in range(0, len(x), bs):
        idx = perm[start : start + bs]
        _step(run, x[idx], y[idx])


def loaders(run: Prepared, bs: int) -> Callable[[Prepared, int], None]:
    loader = DataLoader(TensorDataset(run.tr.x, run.tr.y), batch_size=bs, shuffle=True)

    def data_loader(run: Prepared, bs: int) -> None:
        run.net.train()
        for xb, yb in loader:
            _step(run, xb, yb)

    return data_loader


def torchqueue(run: Prepared, bs: int) -> None:
    summed = training.train_epoch(
        run.net, run.head, run.opt, run.tr, bs, run.gen, False, lambda: False, Dist()
    )
    summed.tolist()


def validation(run: Prepared, bs: int) -> None:
    training.validation(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{'case':26} {'batch':>5} {'DataLoader':>12} {'in memory':>12} {'torchqueue':>12}"
        f" {'tq/in memory':>13} {'validation':>11}"
    )
    for name, (family, dataset, bs) in CASES.items():
        run = _setup(family, dataset, bs)
        fns: dict[str, Callable[[Prepared, int], None]] = {
            "loader": loaders(run, bs),
            "memory": in_memory,
            "torchqueue": torchqueue,
            "validation": validation,
        }
        best = dict.fromkeys(fns, float("inf"))
        for epoch in range(args.epochs + 1):
            for key, fn in fns.items():
                started = time.perf_counter()
                fn(run, bs)
                if epoch:  # the first is a warm-up
                    best[key] = min(best[key], time.perf_counter() - started)
        rate = {k: len(run.tr.x) / v for k, v in best.items()}
        share = best["validation"] / best["torchqueue"]
        print(
            f"{name:26} {bs:5d} {rate['loader']:10.0f}/s {rate['memory']:10.0f}/s "
            f"{rate['torchqueue']:10.0f}/s {rate['torchqueue'] / rate['memory']:12.2f}x "
            f"{share:10.1%}"
        )


if __name__ == "__main__":
    main()

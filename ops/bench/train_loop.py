"""Training throughput: slicing tensors already in memory (what ``workers.training`` does)
against a per-sample ``DataLoader`` over the same tensors, same model, same batches.

    .venv/bin/python -m ops.bench.train_loop [--epochs 5] [--threads 1]

Prints samples per second for both, side by side, measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from shared.schemas import TrainRequest, resolve_train
from workers import data
from workers.families import BUILDERS
from workers.preprocess import LabelEncoder

CASES = {
    "mlp/digits": ("mlp", "digits", 64),
    "text_lstm/sentiment": ("text_lstm", "sentiment", 32),
}


def _setup(family: str, dataset: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    spec = resolve_train(
        TrainRequest.model_validate(
            {"model_name": "bench", "family": family, "dataset": {"builtin": dataset}}
        )
    )
    raw = data.load(spec.dataset)
    builder = BUILDERS[family]
    pre = builder.fit_preprocessor(spec.params, raw.inputs)
    enc = LabelEncoder().fit(raw.labels)
    torch.manual_seed(0)
    model = builder.build(spec.params, pre, len(enc.classes))
    return model, pre.encode(raw.inputs), enc.encode(raw.labels)


def _step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(xb), yb).backward()
    opt.step()


def in_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters())
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), bs):
            idx = perm[start : start + bs]
            _step(model, opt, x[idx], y[idx])


def data_loader(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters())
    loader = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True)
    for _ in range(epochs):
        for xb, yb in loader:
            _step(model, opt, xb, yb)


def _rate(fn: Callable[..., None], family: str, dataset: str, bs: int, epochs: int) -> float:
    model, x, y = _setup(family, dataset)
    fn(model, x, y, bs, 1)  # warm up
    started = time.perf_counter()
    fn(model, x, y, bs, epochs)
    return len(x) * epochs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'case':22} {'batch':>5} {'DataLoader':>12} {'in memory':>12} {'speed-up':>9}")
    for name, (family, dataset, bs) in CASES.items():
        baseline = _rate(data_loader, family, dataset, bs, args.epochs)
        ours = _rate(in_memory, family, dataset, bs, args.epochs)
        print(f"{name:22} {bs:5d} {baseline:10.0f}/s {ours:10.0f}/s {ours / baseline:8.2f}x")


if __name__ == "__main__":
    main()

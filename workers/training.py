"""The training loop: one plain function that tests call without Celery.

Built-in and inline data sets fit in memory, so they become tensors on the device once;
each epoch gathers its shuffled rows a block at a time, and batches are views of that
block: no per-sample DataLoader, which costs most of the time on small models
(``ops/bench/train_loop.py`` measures it). A stored table comes as a feed
(``workers.stored_data``) that gives the same blocks whether its rows are loaded or
streamed by row group. Nothing waits on the device inside an epoch: losses and
predictions are tallied once per block, and read once per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from shared.errors import BadData, NonFiniteLoss
from shared.schemas import TrainSpec
from shared.validation import check_count, check_params, input_shape
from workers import data, stored_data
from workers.checkpoint import Checkpointer, TrainState
from workers.early_stopping import EarlyStopping
from workers.families import Preprocessor, builder_of, own_loss, own_metrics
from workers.heads import Head
from workers.preprocess import LabelEncoder, TargetScaler
from workers.rank import Dist
from workers.resume import restore, snapshot, usable

EVAL_BATCH = stored_data.EVAL_BATCH
Rows = stored_data.Rows
Batch = stored_data.Batch
# An epoch's shuffled rows are copied into contiguous blocks of at most this many rows
# (and bytes), so that a batch is a view rather than a gather of its own.
BLOCK_ROWS = 8192
BLOCK_BYTES = 32 * 1024 * 1024


@dataclass
class Trained:
    """A trained model and everything needed to save it and answer with it."""

    spec: TrainSpec
    module: nn.Module
    preprocessor: Preprocessor
    target: dict[str, Any]
    input_schema: dict[str, Any]
    n_outputs: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    # Training rows seen by this run (a resumed run counts only the epochs it trained).
    samples: int = 0
    # A stored data set's input columns (the texts' one, for a text family), which the
    # registry records: a batch prediction reads the same ones unless told otherwise.
    columns: list[str] | None = None


def _split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(int(n * fraction), n - 1) if n >= 2 else 0
    return perm[n_val:], perm[:n_val]


def _targets(
    spec: TrainSpec, labels: list[Any], train_idx: torch.Tensor, classes: list[Any] | None = None
) -> tuple[torch.Tensor, dict[str, Any], str, int]:
    """Encode the labels; return them, the target's saved state, the head and its width.
    ``classes``: the data set's own classes in order (built-in sets), else sorted labels."""
    if spec.task == "regression":
        try:
            y = torch.tensor(labels, dtype=torch.float32)
        except (TypeError, ValueError):
            raise BadData("regression targets must be numbers") from None
        scaler = TargetScaler().fit(y[train_idx])
        return scaler.encode(y), scaler.to_json(), "mse", 1
    enc = LabelEncoder(list(classes)) if classes else LabelEncoder().fit(labels)
    if len(enc.classes) < 2:
        raise BadData("classification needs at least two classes")
    y = enc.encode(labels)
    n_outputs = builder_of(spec.family).family.n_outputs(spec.task, len(enc.classes))
    if n_outputs == 1:
        return y.float(), enc.to_json(), "bce", 1
    return y, enc.to_json(), "ce", n_outputs


def _forward(module: nn.Module, amp: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's forward pass, under bf16 autocast when ``amp`` (GPUs)."""
    if not amp:
        return module

    def autocast(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return module(x)

    return autocast


def _evaluate(
    module: nn.Module, head: Head, batches: Iterable[Batch], target: dict[str, Any], amp: bool
) -> dict[str, float]:
    """Loss and score over ``batches``, under inference mode, read once."""
    module.eval()
    forward = _forward(module, amp)
    n = 0
    with torch.inference_mode():
        sums = []
        for xb, yb in batches:
            out = forward(xb)
            parts = [head.loss(out, yb) * len(xb), head.score(out, yb), *head.extra(out, yb)]
            sums.append(torch.stack(parts))
            n += len(xb)
        total, score, *extra = (sums[0] if len(sums) == 1 else torch.stack(sums).sum(0)).tolist()
    n = max(n, 1)
    own = {name: value / n for name, value in zip(head.metrics, extra, strict=True)}
    if head.kind == "mse":
        return {"loss": total / n, "mse": score / n * target["std"] ** 2, **own}
    return {"loss": total / n, "accuracy": score / n, **own}


def _eval_batches(d: Rows) -> Iterator[Batch]:
    for start in range(0, len(d.x), EVAL_BATCH):
        yield d.x[start : start + EVAL_BATCH], d.y[start : start + EVAL_BATCH]


def _optimizer(spec: TrainSpec, module: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Adam or SGD, with the fused kernels on CPUs and GPUs: one call updates every
    parameter (the same arithmetic as the per-parameter loop, a quarter less time per step
    for a small MLP on the CPU)."""
    t = spec.training
    fused = True if device.type in ("cpu", "cuda") else None
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            module.parameters(),
            lr=t.learning_rate,
            momentum=t.momentum,
            weight_decay=t.weight_decay,
            fused=fused,
        )
    return torch.optim.Adam(
        module.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay, fused=fused
    )


class Interrupted(Exception):
    """Training stopped between two batches because ``should_stop`` said so."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"stopped during epoch {epoch}")
        self.epoch = epoch


def _block_rows(row_bytes: int, batch_size: int) -> int:
    """Rows per contiguous block: whole batches, within BLOCK_ROWS and BLOCK_BYTES."""
    rows = min(BLOCK_ROWS, BLOCK_BYTES // max(row_bytes, 1))
    return max(rows // batch_size, 1) * batch_size


def _row_blocks(d: Rows, batch_size: int, gen: torch.Generator, dist: Dist) -> Iterator[Batch]:
    """This rank's share of the rows in a shuffled order, gathered a block at a time."""
    perm = dist.shard(torch.randperm(len(d.x), generator=gen)).to(d.x.device)
    per_block = _block_rows(d.x[:1].numel() * d.x.element_size(), batch_size)
    for first in range(0, len(perm), per_block):
        idx = perm[first : first + per_block]
        yield d.x[idx], d.y[idx]


def train_epoch(
    module: nn.Module,
    head: Head,
    opt: torch.optim.Optimizer,
    d: Rows,
    batch_size: int,
    gen: torch.Generator,
    amp: bool,
    should_stop: Callable[[], bool],
    dist: Dist,
) -> torch.Tensor:
    """One pass over the rows of ``d`` (this rank's share), shuffled by ``gen``."""
    batch_size = max(batch_size // dist.world, 1)
    blocks = _row_blocks(d, batch_size, gen, dist)
    return train_blocks(module, head, opt, blocks, batch_size, d.x.device, amp, should_stop, dist)


def train_blocks(
    module: nn.Module,
    head: Head,
    opt: torch.optim.Optimizer,
    blocks: Iterable[Batch],
    batch_size: int,
    device: torch.device,
    amp: bool,
    should_stop: Callable[[], bool],
    dist: Dist,
) -> torch.Tensor:
    """One pass over an epoch's blocks (whole batches of ``batch_size`` but the last);
    returns, summed over every rank, the loss summed over the rows, the score (correct
    answers; 0 for regression) and the rows covered. ``should_stop`` is asked before
    every batch: cancelling costs at most one batch."""
    module.train()
    forward = _forward(module, amp)
    # What ``opt.zero_grad(set_to_none=True)`` does, without its per-call bookkeeping.
    params = [p for group in opt.param_groups for p in group["params"]]
    loss_sum = torch.zeros((), device=device)
    score = torch.zeros((), device=device)
    covered = 0
    for xs, ys in blocks:
        losses: list[torch.Tensor] = []
        outs: list[torch.Tensor] = []
        for start in range(0, len(xs), batch_size):
            if dist.any(should_stop(), device):
                raise Interrupted(0)
            xb, yb = xs[start : start + batch_size], ys[start : start + batch_size]
            for p in params:
                p.grad = None
            out = forward(xb)
            loss = head.loss(out, yb)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            outs.append(out.detach())
        # Every batch but the block's last is whole: weigh each mean by its rows.
        last = len(xs) - batch_size * (len(losses) - 1)
        stacked = torch.stack(losses)
        loss_sum += stacked.sum() * batch_size + stacked[-1] * (last - batch_size)
        if head.kind != "mse":
            score += head.score(torch.cat(outs), ys)
        covered += len(xs)
    rows = torch.tensor(float(covered), device=device)
    return dist.total(torch.stack([loss_sum, score, rows]))


def _never() -> bool:
    return False


@dataclass
class Hooks:
    """What the loop tells its caller, and asks it."""

    on_epoch: Callable[[dict[str, Any]], None] | None = None
    on_resume: Callable[[int], None] | None = None
    should_stop: Callable[[], bool] = _never
    checkpointer: Checkpointer | None = None
    # Merged into every epoch's record (the attempt that trained it, say).
    record_extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """Everything one training run works with (``prepare`` makes it)."""

    spec: TrainSpec
    pre: Preprocessor
    target: dict[str, Any]
    n_outputs: int
    input_schema: dict[str, Any]
    # The rows on the device (empty where a stored table is streamed); a stored table's
    # ``feed`` decides the order of its rows, whether loaded or streamed.
    tr: Rows
    va: Rows
    feed: stored_data.Feed | None
    # ``net`` is the model; ``module`` is what trains it (``net`` itself, or a
    # DistributedDataParallel around it).
    net: nn.Module
    module: nn.Module
    head: Head
    opt: torch.optim.Optimizer
    gen: torch.Generator
    stopper: EarlyStopping
    baseline: float | None
    amp: bool
    # A stored data set's input columns (``Trained.columns``).
    columns: list[str] | None = None

    @property
    def n_train(self) -> int:
        return self.feed.n_train if self.feed is not None else len(self.tr.x)

    @property
    def n_val(self) -> int:
        return self.feed.n_val if self.feed is not None else len(self.va.x)

    def blocks(self, batch_size: int, dist: Dist) -> tuple[Iterable[Batch], torch.device]:
        """An epoch's blocks of this rank's rows, and the device they are on."""
        if self.feed is None:
            return _row_blocks(self.tr, batch_size, self.gen, dist), self.tr.x.device
        per_block = _block_rows(self.feed.row_bytes, batch_size)
        return self.feed.blocks(self.gen, batch_size, per_block, dist), self.feed.device

    def val_batches(self) -> Iterable[Batch]:
        if self.feed is not None:
            return self.feed.val_batches()
        return _eval_batches(self.va)


def _take(inputs: Sequence[Any], idx: torch.Tensor) -> Sequence[Any]:
    """The rows at ``idx``: a slice of a tensor of rows, or a list of the others."""
    if isinstance(inputs, torch.Tensor):
        return cast(Sequence[Any], inputs[idx])
    return [inputs[i] for i in idx.tolist()]


def _stored(spec: TrainSpec) -> bool:
    """A stored table: trained through ``stored_data`` (arrays stay on the in-memory path,
    and so do images, which ``data.load`` reads from arrays only, refusing a table)."""
    file = spec.dataset.file
    images = builder_of(spec.family).family.input_kind == "image"
    return file is not None and file.format not in ("npy", "npz") and not images


def prepare(spec: TrainSpec, device: torch.device, resume: TrainState | None = None) -> Prepared:
    """Data as tensors on the device (or a stored table's feed), the model, its optimizer
    and generators; the preprocessing comes from the checkpoint when resuming."""
    t = spec.training
    builder = builder_of(spec.family)
    # The family's own rules, here where its code is (the API knows a plugin's family by
    # its parameters' JSON Schema alone); the size once the input's shape is known.
    check_params(builder.family, spec.params)
    loaded = builder.load_preprocessor(resume.meta["preprocessor"]) if resume is not None else None
    feed = None
    columns = None
    if _stored(spec):
        feed, enc, baseline = stored_data.open_feed(spec, device, loaded)
        pre, target, head_kind, n_outputs = enc.pre, enc.target, enc.head, enc.n_outputs
        tr, va = feed.rows()
        has_val = feed.n_val > 0
    else:
        raw = data.load(spec.dataset, builder.family.input_kind)
        if len(raw.inputs) < 1:
            raise BadData("the data set is empty")
        train_idx, val_idx = _split(len(raw.inputs), t.validation_fraction, t.seed)
        y, target, head_kind, n_outputs = _targets(spec, raw.labels, train_idx, raw.classes)
        pre = loaded or builder.fit_preprocessor(spec.params, _take(raw.inputs, train_idx))
        x = pre.encode(raw.inputs)
        tr = Rows(x[train_idx].to(device), y[train_idx].to(device))
        va = Rows(x[val_idx].to(device), y[val_idx].to(device))
        baseline = _baseline_mse(tr, va, target) if head_kind == "mse" else None
        has_val = len(va.x) > 0
        columns = raw.columns
    schema = builder.input_schema(pre)
    check_count(builder.family, spec.params, input_shape(schema), n_outputs)
    torch.manual_seed(t.seed)
    module = builder.build(spec.params, pre, n_outputs).to(device)
    return Prepared(
        spec=spec,
        pre=pre,
        target=target,
        n_outputs=n_outputs,
        input_schema=schema,
        tr=tr,
        va=va,
        feed=feed,
        net=module,
        module=module,
        head=Head(
            head_kind,
            own_loss(builder, spec.params, head_kind),
            own_metrics(builder, spec.params, head_kind),
        ),
        opt=_optimizer(spec, module, device),
        gen=torch.Generator().manual_seed(t.seed + 1),
        stopper=EarlyStopping(t.early_stopping_patience if has_val else None),
        baseline=baseline,
        amp=device.type == "cuda",
        columns=feed.columns() if feed is not None else columns,
    )


def _epoch(run: Prepared, epoch: int, hooks: Hooks, dist: Dist) -> dict[str, Any]:
    started = time.perf_counter()
    t = run.spec.training
    try:
        batch_size = max(t.batch_size // dist.world, 1)
        blocks, device = run.blocks(batch_size, dist)
        summed = train_blocks(
            run.module,
            run.head,
            run.opt,
            blocks,
            batch_size,
            device,
            run.amp,
            hooks.should_stop,
            dist,
        )
    except Interrupted:
        raise Interrupted(epoch) from None
    total, score, rows = summed.tolist()
    rows = max(rows, 1.0)
    if not math.isfinite(total):
        raise NonFiniteLoss(
            f"the training loss became {total} in epoch {epoch}; "
            "try a lower learning rate or standardized inputs"
        )
    record: dict[str, Any] = {"epoch": epoch, "train_loss": total / rows}
    if run.head.kind == "mse":
        record["train_mse"] = total / rows * run.target["std"] ** 2
    else:
        record["train_accuracy"] = score / rows
    record |= validation(run)
    record["seconds"] = round(time.perf_counter() - started, 4)
    return record | hooks.record_extra


def train(
    spec: TrainSpec,
    *,
    device: torch.device | None = None,
    hooks: Hooks | None = None,
    dist: Dist | None = None,
) -> Trained:
    """Train ``spec`` to the end (or early stop), resuming from the checkpoint when there
    is one; raise ``BadData``, ``NonFiniteLoss`` or ``Interrupted``.

    With ``dist`` (a process group already set up), this is one rank of a data-parallel
    run: every rank trains on its share of each batch and evaluates the whole data (so
    that all take the same early-stopping decisions); only the leader writes checkpoints
    and reports progress."""
    hooks = hooks or Hooks()
    dist = dist or Dist()
    on_epoch = hooks.on_epoch if dist.leader else None
    resume = usable(hooks.checkpointer, spec)
    run = prepare(spec, device or torch.device("cpu"), resume)
    history: list[dict[str, Any]] = []
    first = 1
    if resume is not None:
        history, first = restore(resume, run), resume.epoch + 1
        if hooks.on_resume is not None and dist.leader:
            hooks.on_resume(resume.epoch)
    if dist.world > 1:
        run.module = torch.nn.parallel.DistributedDataParallel(run.net)

    for epoch in range(first, spec.training.epochs + 1):
        if run.stopper.stopped:
            break
        record = _epoch(run, epoch, hooks, dist)
        history.append(record)
        run.stopper.should_stop(record, run.net)
        saving = hooks.checkpointer is not None and dist.leader
        if saving and hooks.checkpointer.due(final=run.stopper.stopped):  # type: ignore[union-attr]
            hooks.checkpointer.save(snapshot(epoch, run, history))  # type: ignore[union-attr]
        # After the checkpoint: progress that shows epoch k means a crash resumes from k
        # (or, where checkpoints skip short epochs, from the last one written).
        if on_epoch is not None:
            on_epoch(record)

    # The model keeps the best epoch's weights with early stopping, else the last epoch's;
    # its metrics are that epoch's. ``best_epoch`` is the lowest validation loss's either way.
    kept = run.stopper.restore(run.net) or len(history)
    hidden = ("seconds", *hooks.record_extra)
    return Trained(
        spec=spec,
        module=run.net.eval(),
        preprocessor=run.pre,
        target=run.target,
        input_schema=run.input_schema,
        n_outputs=run.n_outputs,
        metrics={k: v for k, v in history[kept - 1].items() if k not in hidden},
        history=history,
        best_epoch=run.stopper.best_epoch or len(history),
        stopped_early=run.stopper.stopped,
        samples=run.n_train * (len(history) - first + 1),
        columns=run.columns,
    )


def validation(run: Prepared) -> dict[str, float]:
    """The epoch's validation loss and score (accuracy, or MSE beside the baseline's)."""
    if not run.n_val:
        return {}
    score = "mse" if run.head.kind == "mse" else "accuracy"
    val = _evaluate(run.net, run.head, run.val_batches(), run.target, run.amp)
    out = {"val_loss": val["loss"], f"val_{score}": val[score]}
    out |= {f"val_{name}": val[name] for name in run.head.metrics}
    if run.baseline is not None:
        out["val_baseline_mse"] = run.baseline
    return out


def _baseline_mse(tr: Rows, va: Rows, target: dict[str, Any]) -> float | None:
    """Validation MSE of always answering the training mean: what a model must beat."""
    if not len(va.x):
        return None
    std = target["std"]
    return float(((va.y - tr.y.mean()) ** 2).mean()) * std * std

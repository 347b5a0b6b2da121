"""Training rows from a stored Parquet table, loaded whole or streamed by row group, with
the same model either way for the same seed.

Columns go from Parquet to tensors with no loop over rows (pyarrow → numpy → torch;
class labels through ``pyarrow.compute.index_in``). Whether a table is loaded or streamed
depends on its size in memory against ``settings.dataset_memory_mb``; everything else is
defined by the row groups, never by the mode:

- the validation rows are the ``validation_fraction`` of rows with the lowest draws of a
  hash of (seed, index in the file) (or, with a validation data set, that set's rows);
- statistics (the standardisation, a regression target's mean and spread, the classes,
  a tokenizer's vocabulary) are accumulated row group by row group, in file order;
- an epoch takes the row groups in a seeded order and each group's training rows in a
  seeded order (both drawn from the run's shuffle generator, so a checkpoint resumes the
  same sequence), and cuts that one sequence into blocks and batches;
- validation runs over the validation rows in file order, in batches of ``EVAL_BATCH``.

Loaded, the rows sit on the device once; streamed, each epoch reads and encodes one row
group at a time (the file is held open, so the cache cannot take it away mid-run).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from shared.config import get_settings
from shared.errors import BadData
from shared.schemas import DatasetFile, TrainSpec
from workers import dataset_files
from workers.families import Preprocessor, builder_of
from workers.families.mlp import Standardized
from workers.families.text_lstm import Tokenized
from workers.preprocess import LabelEncoder, Standardizer, TargetScaler, Tokenizer, tokenize
from workers.rank import Dist

EVAL_BATCH = 4096
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Rows:
    """One split of the data: inputs and encoded targets, on the device."""

    x: torch.Tensor
    y: torch.Tensor


_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def row_draws(first: int, n: int, seed: int) -> np.ndarray[Any, Any]:
    """A number in [0, 1) for each of rows ``first .. first+n-1``: splitmix64 of the row's
    index and the seed. It depends on nothing else, so any reader draws the same."""
    z = np.arange(first, first + n, dtype=np.uint64) * np.uint64(_GOLDEN)
    z += np.uint64(((seed + 1) * _GOLDEN) & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return np.asarray((z >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def validation_masks(sizes: list[int], seed: int, fraction: float) -> list[np.ndarray[Any, Any]]:
    """Per row group, True where the row validates: the ``fraction`` of rows with the
    lowest draws, as many as the in-memory split takes (``int(n * fraction)``, leaving at
    least one row to train on)."""
    n = sum(sizes)
    k = min(int(n * fraction), n - 1) if n >= 2 else 0
    firsts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
    if k == 0:
        return [np.zeros(size, dtype=bool) for size in sizes]
    draws = row_draws(0, n, seed)
    threshold = np.partition(draws, k - 1)[k - 1]
    return [draws[firsts[g] : firsts[g] + size] <= threshold for g, size in enumerate(sizes)]


class Table:
    """One stored table's row groups, held open; the columns a job reads from it."""

    def __init__(
        self,
        file: DatasetFile,
        spec: TrainSpec,
        rows: Literal["split", "train", "validation"] = "split",
    ) -> None:
        """``rows``: ``split`` (training and validation rows by the seed), ``train`` or
        ``validation`` (every row)."""
        import pyarrow.parquet as pq

        self.where = f"data set '{file.name}' version {file.version}"
        # A URL source's CSV or JSON Lines comes back as its Parquet form.
        path: Path = dataset_files.local_copy(file)
        self.parquet = pq.ParquetFile(path)
        names = self.parquet.schema_arrow.names
        d = spec.dataset
        self.label = d.label or ""
        if self.label not in names:
            raise BadData(
                f"{self.where} has no column '{self.label}'; it has {', '.join(names)}",
                field="dataset.label",
            )
        self.text = d.text
        if self.text is None and builder_of(spec.family).family.input_kind == "text":
            self.text = self._only_text_column()
        self.features = [] if self.text else (d.features or [n for n in names if n != self.label])
        for name in [*self.features, *([self.text] if self.text else [])]:
            if name not in names:
                raise BadData(f"{self.where} has no column '{name}'", field="dataset.features")
        meta = self.parquet.metadata
        self.sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        t = spec.training
        # Per row group: True where the row validates.
        if rows == "split":
            self.masks = validation_masks(self.sizes, t.seed, t.validation_fraction)
        else:
            self.masks = [np.full(n, rows == "validation") for n in self.sizes]
        self.n_val = int(sum(int(m.sum()) for m in self.masks))
        self.n_rows = int(sum(self.sizes))

    def _only_text_column(self) -> str:
        """A text family's column when the job names none: the only one of texts."""
        import pyarrow as pa

        schema = self.parquet.schema_arrow
        texts = [
            f.name
            for f in schema
            if f.name != self.label
            and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
        ]
        if len(texts) != 1:
            raise BadData(
                f"{self.where}: name the column of texts among {', '.join(texts) or '(none)'}",
                field="dataset.text",
            )
        return texts[0]

    def train_sizes(self) -> list[int]:
        return [int((~m).sum()) for m in self.masks]

    def memory_bytes(self, spec: TrainSpec) -> int:
        """What the rows take once encoded: float32 features, or token ids and the texts."""
        if self.text is None:
            return self.n_rows * (4 * len(self.features) + 8)
        meta = self.parquet.metadata
        col = self.parquet.schema_arrow.get_field_index(self.text)
        groups = range(len(self.sizes))
        texts = sum(meta.row_group(g).column(col).total_uncompressed_size for g in groups)
        return int(texts) + self.n_rows * 8 * (int(spec.params.get("max_len", 0)) + 1)

    def read(self, g: int) -> tuple[Any, Any]:
        """Row group ``g``: its inputs (float32 rows, or texts) and its label column."""
        import pyarrow as pa

        columns = [self.text] if self.text else self.features
        table = self.parquet.read_row_group(g, columns=[*columns, self.label])
        labels = table.column(self.label).combine_chunks()
        if self.text:
            return table.column(self.text).to_pylist(), labels
        x = np.empty((table.num_rows, len(self.features)), dtype=np.float32)
        for j, name in enumerate(self.features):
            column = table.column(name)
            kind = column.type
            if not (pa_numeric(kind) or pa.types.is_boolean(kind)):
                raise BadData(
                    f"column '{name}' of {self.where} holds {kind} values, not numbers",
                    field="dataset.features",
                )
            x[:, j] = column.to_numpy()
        if not np.isfinite(x).all():
            raise BadData(f"{self.where} has missing, NaN or infinite feature values")
        return x, labels


def _pick(inputs: Any, mask: np.ndarray[Any, Any]) -> Any:
    if isinstance(inputs, np.ndarray):
        return inputs[mask]
    return [t for t, m in zip(inputs, mask.tolist(), strict=True) if m]


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.)."""

    n: int = 0
    mean: np.ndarray[Any, Any] | float = 0.0
    m2: np.ndarray[Any, Any] | float = 0.0

    def add(self, values: np.ndarray[Any, Any]) -> None:
        if not len(values):
            return
        v = values.astype(np.float64)
        n, mean = len(v), v.mean(axis=0)
        m2 = ((v - mean) ** 2).sum(axis=0)
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * n / total)
        self.n = total

    def std(self) -> Any:
        return np.sqrt(np.asarray(self.m2) / max(self.n, 1))


@dataclass
class _Stats:
    """What one pass over the row groups gathers, for the preprocessing and the target."""

    regression: bool
    features: _Moments = field(default_factory=_Moments)
    tokens: Counter[str] = field(default_factory=Counter)
    target: _Moments = field(default_factory=_Moments)
    val_target: _Moments = field(default_factory=_Moments)
    classes: dict[str, Any] = field(default_factory=dict)

    def add(self, inputs: Any, labels: Any, mask: np.ndarray[Any, Any], fit: bool) -> None:
        import pyarrow.compute as pc

        train = ~mask
        if fit:
            if isinstance(inputs, np.ndarray):
                self.features.add(inputs[train])
            else:
                self.tokens.update(tok for text in _pick(inputs, train) for tok in tokenize(text))
        if self.regression:
            if not (pa_numeric(labels.type)):
                raise BadData("regression targets must be numbers", field="dataset.label")
            y = labels.to_numpy(zero_copy_only=False)
            self.target.add(y[train])
            self.val_target.add(y[mask])
        else:
            for value in pc.unique(labels).to_pylist():
                self.classes.setdefault(str(value), value)


def pa_numeric(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))


@dataclass
class Encoding:
    """How a row group's raw rows become tensors: inputs through the preprocessor,
    labels as the head takes them."""

    pre: Preprocessor
    target: dict[str, Any]
    head: str
    n_outputs: int
    classes: list[Any] | None = None
    scaler: TargetScaler | None = None

    def inputs(self, raw: Any) -> torch.Tensor:
        rows = torch.from_numpy(raw) if isinstance(raw, np.ndarray) else raw
        return self.pre.encode(cast(Sequence[Any], rows))

    def labels(self, column: Any) -> torch.Tensor:
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.scaler is not None:
            y = torch.from_numpy(column.to_numpy(zero_copy_only=False).astype(np.float32))
            return self.scaler.encode(y)
        try:
            value_set = pa.array(self.classes).cast(column.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise BadData(
                "the validation data set's labels are not of the training set's type"
            ) from None
        index = pc.index_in(column, value_set=value_set)
        if index.null_count:
            raise BadData("a validation label is not among the training data set's classes")
        y = torch.from_numpy(index.to_numpy(zero_copy_only=False).astype(np.int64))
        return y.float() if self.head == "bce" else y


def encoding(
    spec: TrainSpec, tables: list[Table], pre: Preprocessor | None
) -> tuple[Encoding, float | None]:
    """One pass over every row group: fit the preprocessing (unless ``pre`` is given,
    from a checkpoint) and the target; return them and the validation baseline MSE."""
    builder = builder_of(spec.family)
    regression = spec.task == "regression"
    stats = _Stats(regression)
    fit = pre is None
    generic: list[Any] = []
    # Preprocessing that is fitted chunk by chunk here: the shared halves of the built-in
    # feature and text families (a plugin's builder that takes them gets it too).
    known = isinstance(builder, Standardized | Tokenized)
    for table in tables:
        for g, mask in enumerate(table.masks):
            inputs, labels = table.read(g)
            stats.add(inputs, labels, mask, fit and known)
            if fit and not known:  # a family of another package: fitted on rows in memory
                generic.extend(list(_pick(inputs, ~mask)))
    if pre is None:
        if isinstance(builder, Standardized):
            std = stats.features.std()
            pre = Standardizer(
                np.asarray(stats.features.mean, dtype=np.float64).tolist(),
                np.where(std > 1e-12, std, 1.0).tolist(),
            )
        elif isinstance(builder, Tokenized):
            tok = Tokenizer(spec.params["num_words"], spec.params["max_len"])
            ranked = sorted(stats.tokens.items(), key=lambda kv: (-kv[1], kv[0]))
            tok.vocab = {t: i + 2 for i, (t, _) in enumerate(ranked[: tok.num_words - 2])}
            pre = tok
        else:
            pre = builder.fit_preprocessor(spec.params, generic)
    if regression:
        t = stats.target
        spread = float(t.std())
        scaler = TargetScaler(float(t.mean), spread if spread > 1e-12 else 1.0)
        v = stats.val_target
        baseline = None
        if v.n:
            baseline = float(np.asarray(v.m2) / v.n + (float(v.mean) - scaler.mean) ** 2)
        return Encoding(pre, scaler.to_json(), "mse", 1, scaler=scaler), baseline
    enc = LabelEncoder().fit(list(stats.classes.values()))
    if len(enc.classes) < 2:
        raise BadData("classification needs at least two classes")
    n_outputs = builder.family.n_outputs(spec.task, len(enc.classes))
    head = "bce" if n_outputs == 1 else "ce"
    return Encoding(pre, enc.to_json(), head, n_outputs, classes=enc.classes), None


def streaming(tables: list[Table], spec: TrainSpec) -> bool:
    bound = get_settings().dataset_memory_mb * 1024 * 1024
    return sum(t.memory_bytes(spec) for t in tables) > bound


class Feed:
    """An epoch's training blocks and the validation batches, the same rows in the same
    order whether the rows are loaded (``Loaded``) or streamed (``Streamed``)."""

    def __init__(self, train: Table, val: list[Table], enc: Encoding, device: torch.device):
        self.train_table = train
        self.val_tables = val
        self.enc = enc
        self.device = device
        self.train_sizes = train.train_sizes()
        self.n_train = sum(self.train_sizes)
        self.n_val = sum(t.n_val for t in val)
        # Bytes of one encoded row: features as float32, or token ids.
        if train.text is None:
            self.row_bytes = max(4 * len(train.features), 1)
        else:
            self.row_bytes = 8 * int(enc.pre.to_json().get("max_len", 1))
        if self.n_train < 1:
            raise BadData(f"{train.where} leaves no rows to train on")

    def columns(self) -> list[str]:
        """The input columns: the features, or a text family's column of texts."""
        table = self.train_table
        return [table.text] if table.text is not None else list(table.features)

    def _group(self, g: int, local: torch.Tensor) -> Batch:
        raise NotImplementedError

    def rows(self) -> tuple[Rows, Rows]:
        """The training and validation rows on the device; empty where streamed."""
        x, y = self._group(0, torch.zeros(0, dtype=torch.long))
        return Rows(x, y), Rows(x, y)

    def _val_pieces(self) -> Iterator[Batch]:
        raise NotImplementedError

    def blocks(
        self, gen: torch.Generator, batch_size: int, per_block: int, dist: Dist
    ) -> Iterator[Batch]:
        """This rank's blocks of ``per_block`` rows (whole batches but the last)."""
        groups = torch.randperm(len(self.train_sizes), generator=gen).tolist()
        whole = self.n_train // dist.world * dist.world
        position = 0
        pieces: list[Batch] = []
        held = 0
        for g in groups:
            size = self.train_sizes[g]
            if not size:
                continue
            local = torch.randperm(size, generator=gen)
            if dist.world > 1:  # the rows ``Dist.shard`` would give this rank
                at = torch.arange(position, position + size)
                local = local[(at < whole) & (at % dist.world == dist.rank)]
            position += size
            if not len(local):
                continue
            pieces.append(self._group(g, local))
            held += len(local)
            while held >= per_block:
                block, pieces = _cut(pieces, per_block)
                held -= per_block
                yield block
        if held:
            yield _cut(pieces, held)[0]

    def val_batches(self) -> Iterator[Batch]:
        pieces: list[Batch] = []
        held = 0
        for piece in self._val_pieces():
            pieces.append(piece)
            held += len(piece[0])
            while held >= EVAL_BATCH:
                batch, pieces = _cut(pieces, EVAL_BATCH)
                held -= EVAL_BATCH
                yield batch
        if held:
            yield _cut(pieces, held)[0]


def _cut(pieces: list[Batch], n: int) -> tuple[Batch, list[Batch]]:
    """The first ``n`` rows of ``pieces`` as one batch, and the pieces left."""
    taken: list[Batch] = []
    left = n
    while left:
        x, y = pieces[0]
        if len(x) <= left:
            taken.append(pieces.pop(0))
            left -= len(x)
        else:
            taken.append((x[:left], y[:left]))
            pieces[0] = (x[left:], y[left:])
            left = 0
    if len(taken) == 1:
        return taken[0], pieces
    return (torch.cat([t[0] for t in taken]), torch.cat([t[1] for t in taken])), pieces


class Loaded(Feed):
    """Every row encoded once, on the device: the training rows group after group, the
    validation rows in file order."""

    def __init__(self, train: Table, val: list[Table], enc: Encoding, device: torch.device):
        super().__init__(train, val, enc, device)
        self.offsets = np.concatenate([[0], np.cumsum(self.train_sizes)]).astype(np.int64).tolist()
        xs, ys, vxs, vys = [], [], [], []
        for table in [train, *[t for t in val if t is not train]]:
            for g, mask in enumerate(table.masks):
                inputs, labels = table.read(g)
                if table is train:
                    x, y = _encoded(enc, inputs, labels, ~mask)
                    xs.append(x)
                    ys.append(y)
                if mask.any() and table in val:
                    x, y = _encoded(enc, inputs, labels, mask)
                    vxs.append(x)
                    vys.append(y)
        self.x = _joined(xs).to(device)
        self.y = _joined(ys).to(device)
        self.vx = _joined(vxs).to(device) if vxs else self.x[:0]
        self.vy = _joined(vys).to(device) if vys else self.y[:0]

    def _group(self, g: int, local: torch.Tensor) -> Batch:
        idx = (local + self.offsets[g]).to(self.device)
        return self.x[idx], self.y[idx]

    def rows(self) -> tuple[Rows, Rows]:
        return Rows(self.x, self.y), Rows(self.vx, self.vy)

    def _val_pieces(self) -> Iterator[Batch]:
        for start in range(0, len(self.vx), EVAL_BATCH):
            yield self.vx[start : start + EVAL_BATCH], self.vy[start : start + EVAL_BATCH]


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _encoded(enc: Encoding, inputs: Any, labels: Any, mask: np.ndarray[Any, Any]) -> Batch:
    import pyarrow as pa

    return enc.inputs(_pick(inputs, mask)), enc.labels(labels.filter(pa.array(mask)))


class Streamed(Feed):
    """Row groups read, encoded and dropped as the epoch reaches them."""

    def _group(self, g: int, local: torch.Tensor) -> Batch:
        inputs, labels = self.train_table.read(g)
        x, y = _encoded(self.enc, inputs, labels, ~self.train_table.masks[g])
        return x[local].to(self.device), y[local].to(self.device)

    def _val_pieces(self) -> Iterator[Batch]:
        for table in self.val_tables:
            for g, mask in enumerate(table.masks):
                if mask.any():
                    inputs, labels = table.read(g)
                    x, y = _encoded(self.enc, inputs, labels, mask)
                    yield x.to(self.device), y.to(self.device)


def open_feed(
    spec: TrainSpec, device: torch.device, pre: Preprocessor | None
) -> tuple[Feed, Encoding, float | None]:
    """The job's stored table (and validation table) as a feed: loaded or streamed."""
    d = spec.dataset
    assert d.file is not None  # the caller's check: a stored data set
    if d.validation_file is not None:
        train = Table(d.file, spec, "train")
        val = [Table(d.validation_file, spec, "validation")]
    else:
        train = Table(d.file, spec)
        val = [train]
    if train.n_rows < 1:
        raise BadData(f"{train.where} is empty")
    enc, baseline = encoding(spec, [train, *[t for t in val if t is not train]], pre)
    kind: Callable[..., Feed] = Streamed if streaming([train, *val], spec) else Loaded
    return kind(train, [t for t in val if t.n_val], enc, device), enc, baseline

"""Hot models: a per-process cache of loaded models, bounded by the memory their weights
take (``TORCHQUEUE_MODEL_CACHE_MB``) and by count, least recently used out first. Keyed by
model version and checksum: the checksum is checked once, when a version is loaded, and a
changed artifact is never served from memory.

Forward passes of one process take turns (``forward``): on a CPU, two at once only fight
for the same cores, and on a GPU they queue anyway. Each pass picks its thread count by
its size (``threads_for``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch

from shared.artifacts import open_store
from shared.config import get_settings
from shared.schemas import ModelVersionOut
from workers import metrics, modelio
from workers.devices import torch_device

# Below this many rows a forward pass of the models we serve runs faster on one thread
# than on two: splitting the work costs more than it saves (``make bench`` measures it).
SMALL_BATCH_ROWS = 32
# What this process was given (set when the worker started, before this is imported).
_DEFAULT_THREADS = torch.get_num_threads()

_lock = threading.Lock()
_forward = threading.Lock()
_cache: OrderedDict[tuple[str, int, str], modelio.LoadedModel] = OrderedDict()


def model_bytes(model: modelio.LoadedModel) -> int:
    """What a loaded model's weights and buffers take in memory."""
    tensors = [*model.module.parameters(), *model.module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _evict() -> None:
    """Drop the least recently used models until the cache fits its bounds; the newest
    model stays even when it alone is over the byte bound (it is needed now)."""
    settings = get_settings()
    budget = settings.model_cache_mb * 1024 * 1024
    while len(_cache) > 1 and (
        len(_cache) > max(settings.model_cache_size, 1)
        or sum(model_bytes(m) for m in _cache.values()) > budget
    ):
        _cache.popitem(last=False)


def load(name: str, version: int, uri: str, sha256: str) -> modelio.LoadedModel:
    """The model of a version, from memory or loaded (and its checksum checked) now."""
    key = (name, version, sha256)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            metrics.cache_lookup(True, None)
            return _cache[key]
    model = modelio.load(open_store(), uri, sha256, torch_device())
    with _lock:
        _cache[key] = model
        _evict()
        metrics.cache_lookup(False, sum(model_bytes(m) for m in _cache.values()))
    return model


def get_model(version: ModelVersionOut) -> modelio.LoadedModel:
    return load(version.model_name, version.version, version.artifact_uri, version.sha256)


def cached() -> list[tuple[str, int]]:
    """The (model, version) pairs in memory, least recently used first."""
    with _lock:
        return [(name, version) for name, version, _ in _cache]


def threads_for(rows: int) -> int:
    """One thread for a small batch; for a large one, what the worker was given
    (``workers.threads.torch_threads``)."""
    if rows < SMALL_BATCH_ROWS:
        return 1
    return _DEFAULT_THREADS


def forward(model: modelio.LoadedModel, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """One forward pass at a time per process, with the thread count its size wants, in
    batches of at most ``batch_size`` rows."""
    with _forward:
        threads = threads_for(len(x))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return model.forward(x, batch_size)


def predict(version: ModelVersionOut, inputs: Any, outputs: str = "json") -> Any:
    model = get_model(version)
    return model.output(forward(model, model.encode(inputs)), outputs)


def clear() -> None:
    with _lock:
        _cache.clear()

"""Hot models: a per-process cache of loaded models, bounded by the memory their weights
take (``TORCHQUEUE_MODEL_CACHE_MB``) and by count, least recently used out first. Keyed by
model version and checksum: the checksum is checked once, when a version is loaded, and a
changed artifact is never served from memory."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from shared.artifacts import open_store
from shared.config import get_settings
from shared.schemas import ModelVersionOut
from workers import modelio
from workers.devices import torch_device

_lock = threading.Lock()
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


def get_model(version: ModelVersionOut) -> modelio.LoadedModel:
    key = (version.model_name, version.version, version.sha256)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    model = modelio.load(open_store(), version.artifact_uri, version.sha256, torch_device())
    with _lock:
        _cache[key] = model
        _evict()
    return model


def cached() -> list[tuple[str, int]]:
    """The (model, version) pairs in memory, least recently used first."""
    with _lock:
        return [(name, version) for name, version, _ in _cache]


def predict(version: ModelVersionOut, inputs: list[Any]) -> list[dict[str, Any]]:
    return get_model(version).predict(inputs)


def clear() -> None:
    with _lock:
        _cache.clear()

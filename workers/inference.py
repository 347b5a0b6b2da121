"""Hot models: a per-process cache of loaded models, bounded in count, least recently used
out first. Keyed by the version's checksum too, so a changed artifact is never served."""

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


def get_model(version: ModelVersionOut) -> modelio.LoadedModel:
    key = (version.model_name, version.version, version.sha256)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    model = modelio.load(open_store(), version.artifact_uri, version.sha256, torch_device())
    with _lock:
        _cache[key] = model
        while len(_cache) > max(get_settings().model_cache_size, 1):
            _cache.popitem(last=False)
    return model


def predict(version: ModelVersionOut, inputs: list[Any]) -> list[dict[str, Any]]:
    return get_model(version).predict(inputs)


def clear() -> None:
    with _lock:
        _cache.clear()

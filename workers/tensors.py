"""Typed tensors on the wire (``shared.schemas.Tensor``): little-endian bytes in base64,
read into and written from torch tensors without a Python number in between."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import torch

from shared.errors import BadData
from shared.schemas import TENSOR_DTYPES


def decode(wire: dict[str, Any]) -> torch.Tensor:
    """A float32 tensor from ``{"dtype", "shape", "data"}``; the sizes were checked by the
    API, and are checked again here for a message that did not come through it. A batch
    of sync predictions is read without decoding its tensors (``BYTES_READ_LATER``): this
    is where their bytes are decoded, once, and found bad if they are."""
    dtype, shape = wire.get("dtype"), wire.get("shape")
    if dtype not in TENSOR_DTYPES or not isinstance(shape, list):
        raise BadData(f"a tensor needs a dtype of {sorted(TENSOR_DTYPES)} and a shape")
    try:
        raw = base64.b64decode(wire.get("data", ""))
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    except (binascii.Error, ValueError):
        raise BadData(f"the tensor's data is not standard base64 of {dtype} values") from None
    if array.size != int(np.prod(shape)):
        raise BadData(f"the tensor's data holds {array.size} values; its shape {shape} needs more")
    x = torch.from_numpy(array.astype(np.float32).reshape(shape))
    if not torch.isfinite(x).all():
        raise BadData("the tensor holds NaN or infinite values")
    return x


def encode(x: torch.Tensor) -> dict[str, Any]:
    """``{"dtype": "float32", "shape", "data"}`` of a tensor."""
    array = x.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return {
        "dtype": "float32",
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode(),
    }

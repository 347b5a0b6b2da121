"""A serve message as the worker reads it (``workers.batches.decode_batch``): a batch the
API sent comes back field for field, a tensor's bytes are left for the one read that
makes the model's input, and a message that is not a batch is refused with a log line."""

from __future__ import annotations

import base64
import logging
import struct
import uuid
from typing import Any

import pytest
from kombu.utils.json import dumps, loads

from shared.errors import BadData
from shared.jobstate import now
from shared.schemas import ServeBatch, ServeItem, ServeRequest, Tensor
from workers import tensors
from workers.batches import decode_batch

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
TENSOR: dict[str, Any] = {
    "dtype": "float32",
    "shape": [2, 4],
    "data": base64.b64encode(struct.pack("<8f", *ROWS[0], *ROWS[1])).decode(),
}


def _sent(*inputs: Any) -> tuple[ServeBatch, Any]:
    """A batch as the API makes it, and the argument the worker receives."""
    items = []
    for each in inputs:
        req = ServeRequest.model_validate({"inputs": each})
        items.append(
            ServeItem.model_construct(
                id=str(uuid.uuid4()), inputs=req.inputs, outputs=req.outputs, by="k", at=now()
            )
        )
    batch = ServeBatch(model="m", version="latest", queue="predict.default", reply="r",
                       items=items)  # fmt: skip
    return batch, loads(dumps([batch.model_dump(mode="json")]))[0]


def test_a_batch_comes_back_as_it_was_sent() -> None:
    batch, payload = _sent(ROWS, ["a text", "another"], TENSOR)
    got = decode_batch(payload, "m1")
    assert got == batch
    assert isinstance(got.items[2].inputs, Tensor)
    assert got.items[0].at.tzinfo is not None


def test_a_tensors_bytes_are_left_for_the_read_that_checks_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decode(*_: Any, **__: Any) -> bytes:
        raise AssertionError("decoded while the message was read")

    _, payload = _sent(TENSOR)
    monkeypatch.setattr(base64, "b64decode", no_decode)
    assert decode_batch(payload) is not None
    monkeypatch.undo()
    # Still checked for size, from the length of the base64 alone.
    payload["items"][0]["inputs"]["data"] += "AAAA"
    assert decode_batch(payload) is None
    # What only a decode finds is found by the read that makes the model's input.
    for data in ("!" * 43 + "=", "!" + TENSOR["data"][1:], "!!!" + TENSOR["data"][3:]):
        payload["items"][0]["inputs"]["data"] = data
        read = decode_batch(payload)
        assert read is not None and isinstance(read.items[0].inputs, Tensor)
        with pytest.raises(BadData, match="data"):
            tensors.decode(read.items[0].inputs.model_dump())


def _malformed(payload: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    item = payload["items"][0]
    return [
        ({k: v for k, v in payload.items() if k != "items"}, "items: Field required"),
        ({**payload, "items": []}, "items: List should have at least 1 item"),
        ({**payload, "version": 0}, "version"),
        ({**payload, "extra": 1}, "extra: Extra inputs are not permitted"),
        ({**payload, "items": [{**item, "inputs": "rows"}]}, "items.0.inputs"),
        ({**payload, "items": [{**item, "outputs": "xml"}]}, "items.0.outputs"),
        ({**payload, "items": [{k: v for k, v in item.items() if k != "id"}]}, "items.0.id"),
    ]


def test_a_message_that_is_not_a_batch_is_refused_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, payload = _sent(ROWS)
    cases = [("a string", "the message"), *_malformed(payload)]
    for message, where in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="workers.batches"):
            assert decode_batch(message, "bad-1") is None
        [record] = caplog.records
        assert "refused serve message bad-1: not a batch" in record.getMessage()
        assert where in record.getMessage(), record.getMessage()

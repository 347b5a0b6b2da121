"""The benchmark's models, built the way a family builds them, and the in-process ceiling:
predictions/s of the bare module under ``torch.inference_mode`` on the CPU."""

from __future__ import annotations

import random
import time
from typing import Any

import torch
from torch import nn

from workers.families import BUILDERS, Preprocessor

N_FEATURES = 64
N_CLASSES = 10
MLP_PARAMS: dict[str, Any] = {
    "hidden_sizes": [256, 256],
    "activation": "relu",
    "dropout": 0.0,
    "task": "classification",
}
LSTM_PARAMS: dict[str, Any] = {
    "num_words": 1000,
    "max_len": 100,
    "embedding_dim": 16,
    "hidden_size": 32,
}
# The family's defaults, but for the texts' length (the same as the LSTM's).
TRANSFORMER_PARAMS: dict[str, Any] = {
    "num_words": 1000,
    "max_len": 100,
    "layers": 2,
    "heads": 4,
    "width": 64,
    "feedforward": 128,
    "dropout": 0.1,
}
WORDS = [f"w{i}" for i in range(1500)]
# The digits' size: 1×8×8 images through the family's default blocks.
IMAGE_SHAPE = (1, 8, 8)
IMAGE_PARAMS: dict[str, Any] = {"blocks": 2, "width": 32, "kernel_size": 3, "hidden_size": 128}
PARAMS = {
    "mlp": MLP_PARAMS,
    "text_lstm": LSTM_PARAMS,
    "text_transformer": TRANSFORMER_PARAMS,
    "image_cnn": IMAGE_PARAMS,
}
OUTPUTS = {"mlp": N_CLASSES, "text_lstm": 1, "text_transformer": 1, "image_cnn": N_CLASSES}


def sample_rows(n: int, seed: int = 0) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(0.0, 1.0) for _ in range(N_FEATURES)] for _ in range(n)]


def sample_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(20, 120))) for _ in range(n)]


def sample_images(n: int, seed: int = 0) -> torch.Tensor:
    """Images of IMAGE_SHAPE with values 0..16, as the digits have."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (n, *IMAGE_SHAPE), generator=gen).float()


def sample_inputs(family: str, n: int, seed: int = 0) -> Any:
    if family == "image_cnn":
        return sample_images(n, seed)
    return sample_rows(n, seed) if family == "mlp" else list(sample_texts(n, seed))


def build(family: str) -> tuple[Preprocessor, nn.Module]:
    """The preprocessor (fit on generated inputs) and the module in eval mode."""
    builder = BUILDERS[family]
    params = builder.family.params.model_validate(PARAMS[family]).model_dump()
    pre = builder.fit_preprocessor(params, sample_inputs(family, 2000, seed=1))
    torch.manual_seed(0)
    model = builder.build(params, pre, OUTPUTS[family]).eval()
    return pre, model


def predict(pre: Preprocessor, model: nn.Module, inputs: list[Any]) -> list[list[float]]:
    """Encode, forward, probabilities: what one prediction costs end to end in process."""
    with torch.inference_mode():
        out = model(pre.encode(inputs))
        probs = torch.softmax(out, -1) if out.shape[-1] > 1 else torch.sigmoid(out)
    return [[float(p) for p in row] for row in probs]


def rate(family: str, batch: int, seconds: float, inference_mode: bool = True) -> float:
    """Predictions/s of the bare module's forward pass on pre-encoded inputs."""
    pre, model = build(family)
    x = pre.encode(sample_inputs(family, batch, seed=2))
    ctx = torch.inference_mode if inference_mode else torch.enable_grad
    with ctx():
        for _ in range(3):
            model(x)
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(5):
                model(x)
            n += 5
        elapsed = time.perf_counter() - started
    return n * batch / elapsed

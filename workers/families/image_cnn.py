"""``image_cnn``: images [channels, height, width], standardized per channel, through
blocks of convolution → activation → 2×2 pooling, then a linear head (with a hidden
layer unless ``hidden_size`` is 0). Convolutions are padded to keep the image's size, so
only the pooling shrinks it: an 8×8 image takes up to three blocks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from shared.errors import BadData, InvalidSpec
from shared.families import FAMILIES, image_cnn_pooled, image_cnn_widths

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def image_tensor(images: Sequence[Any] | torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
    """Images as one float32 tensor [rows, C, H, W], of ``shape`` [C, H, W] when given;
    rows of [H, W] are one channel."""
    try:
        if isinstance(images, torch.Tensor):
            x = images.to(torch.float32)
        else:
            x = torch.tensor(images, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise BadData(f"images must be nested lists of numbers of one shape: {exc}") from None
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or (shape is not None and list(x.shape[1:]) != list(shape)):
        want = f"[rows, {', '.join(map(str, shape))}]" if shape else "[rows, C, H, W]"
        raise BadData(f"images of shape {list(x.shape)}; expected {want}")
    if not torch.isfinite(x).all():
        raise BadData("the images hold NaN or infinite values")
    return x


class ChannelStandardizer:
    """Each channel's mean and standard deviation over the training images' pixels."""

    def __init__(self, shape: list[int], mean: list[float], std: list[float]):
        self.shape, self.mean, self.std = shape, mean, std
        self._made: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def fit(cls, images: Sequence[Any]) -> ChannelStandardizer:
        x = image_tensor(images, None).double()
        std = x.std(dim=(0, 2, 3), unbiased=False)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        return cls(list(x.shape[1:]), x.mean(dim=(0, 2, 3)).tolist(), std.tolist())

    def encode(self, images: Sequence[Any]) -> torch.Tensor:
        x = image_tensor(images, self.shape)
        if self._made is None:  # made once: a model in the cache encodes every call
            view = (1, len(self.mean), 1, 1)
            self._made = (
                torch.tensor(self.mean).view(view),
                torch.tensor(self.std).view(view),
            )
        mean, std = self._made
        return (x - mean) / std

    def to_json(self) -> dict[str, Any]:
        return {"kind": "channel_standardizer", "shape": self.shape, "mean": self.mean,
                "std": self.std}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChannelStandardizer:
        shape = [int(n) for n in data["shape"]]
        mean, std = [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
        if len(shape) != 3 or min(shape) < 1 or not len(mean) == len(std) == shape[0]:
            raise ValueError("an image standardizer needs a shape [C, H, W] and C means and stds")
        if not all(math.isfinite(v) for v in mean) or not all(v > 0 for v in std):
            raise ValueError("an image standardizer needs finite means and positive stds")
        return cls(shape, mean, std)


class ImageCNN(nn.Module):
    def __init__(self, params: dict[str, Any], shape: list[int], n_outputs: int):
        super().__init__()
        act, pool = ACTIVATIONS[params["activation"]], POOLS[params["pooling"]]
        k = int(params["kernel_size"])
        widths = [shape[0], *image_cnn_widths(params)]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Conv2d(a, b, k, padding=k // 2), act(), pool(2)]
        self.features = nn.Sequential(*layers)
        height, width = image_cnn_pooled(params, (shape[0], shape[1], shape[2]))
        flat, hidden = widths[-1] * height * width, int(params["hidden_size"])
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(flat, hidden), act()]
            flat = hidden
        if params["dropout"] > 0:
            head.append(nn.Dropout(params["dropout"]))
        head.append(nn.Linear(flat, n_outputs))
        self.head = nn.Sequential(*head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class ImageCNNFamily:
    name = "image_cnn"
    family = FAMILIES[name]

    def fit_preprocessor(
        self, params: dict[str, Any], inputs: Sequence[Any]
    ) -> ChannelStandardizer:
        return ChannelStandardizer.fit(inputs)

    def load_preprocessor(self, data: dict[str, Any]) -> ChannelStandardizer:
        return ChannelStandardizer.from_json(data)

    def input_schema(self, pre: ChannelStandardizer) -> dict[str, Any]:
        return {"kind": "image", "shape": list(pre.shape)}

    def build(self, params: dict[str, Any], pre: ChannelStandardizer, n_outputs: int) -> nn.Module:
        try:
            return ImageCNN(params, pre.shape, n_outputs)
        except InvalidSpec as exc:  # images smaller than the API could know (a URL source)
            raise BadData(exc.detail, field=exc.field) from None

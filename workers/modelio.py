"""Models on disk: weights as safetensors, everything else in a JSON manifest.

Nothing is ever unpickled. A load checks the weights' sha256 against the manifest and
against the model registry, and refuses a file that matches neither.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from shared.artifacts import ArtifactStore, sha256_hex
from shared.errors import BadData, ModelLoadError
from workers import tensors
from workers.families import BUILDERS, Preprocessor
from workers.training import Trained

FORMAT = 1
WEIGHTS, MANIFEST = "model.safetensors", "manifest.json"


@dataclass(frozen=True)
class Saved:
    uri: str
    sha256: str
    manifest: dict[str, Any]


def save(trained: Trained, store: ArtifactStore, prefix: str) -> Saved:
    """Write weights, then the manifest that names their checksum; return the prefix URI."""
    state = {k: v.detach().cpu().contiguous() for k, v in trained.module.state_dict().items()}
    weights = save_safetensors(state)
    digest = sha256_hex(weights)
    spec = trained.spec
    manifest = {
        "format": FORMAT,
        "family": spec.family,
        "params": spec.params,
        "task": spec.task,
        "n_outputs": trained.n_outputs,
        "preprocessor": trained.preprocessor.to_json(),
        "target": trained.target,
        "input_schema": trained.input_schema,
        "weights": WEIGHTS,
        "sha256": digest,
        "torch_version": torch.__version__,
    }
    store.put_bytes(f"{prefix}/{WEIGHTS}", weights)
    store.put_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, ensure_ascii=False).encode())
    return Saved(uri=store.uri(prefix), sha256=digest, manifest=manifest)


class LoadedModel:
    """A model ready to answer: preprocess → forward under inference mode → postprocess."""

    def __init__(self, manifest: dict[str, Any], module: nn.Module, pre: Preprocessor):
        self.manifest = manifest
        self.module = module
        self.pre = pre
        self.task: str = manifest["task"]
        self.target: dict[str, Any] = manifest["target"]

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def encode(self, inputs: Sequence[Any] | dict[str, Any]) -> torch.Tensor:
        """Raw inputs (a list of rows, or a typed tensor as a dict) as the model's input."""
        if isinstance(inputs, dict):
            if self.manifest["input_schema"].get("kind") == "text":
                raise BadData("this model takes texts (strings), not a tensor")
            x = tensors.decode(inputs)
            width = int(self.manifest["input_schema"]["n_features"])
            if x.shape[-1] != width:
                raise BadData(f"the tensor has {x.shape[-1]} features; the model takes {width}")
            return self.pre.encode(x)  # type: ignore[arg-type]
        return self.pre.encode(inputs)

    def forward(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The model's raw outputs for encoded inputs, as float32 on the CPU."""
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                chunks.append(self.module(x[start : start + batch_size].to(self.device)))
        return torch.cat(chunks).float().cpu()

    def predict(self, inputs: Sequence[Any] | dict[str, Any], outputs: str = "json") -> Any:
        """Outputs for raw inputs: a list of answers, or a tensor (``output``)."""
        return self.output(self.forward(self.encode(inputs)), outputs)

    def output(self, out: torch.Tensor, form: str) -> Any:
        """Raw outputs as answers: one dict per row (json), or one tensor of the
        probabilities, or of the values for a regression (tensor)."""
        return tensors.encode(self.scores(out)) if form == "tensor" else self.answers(out)

    @property
    def classes(self) -> list[Any] | None:
        return None if self.task == "regression" else list(self.target["classes"])

    def scores(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities (rows × classes), or regression values (rows)."""
        if self.task == "regression":
            return out.squeeze(-1) * self.target["std"] + self.target["mean"]
        if out.shape[-1] == 1:
            p1 = torch.sigmoid(out.squeeze(-1))
            return torch.stack([1 - p1, p1], dim=-1)
        return torch.softmax(out, dim=-1)

    def answers(self, out: torch.Tensor) -> list[dict[str, Any]]:
        scores = self.scores(out)
        if self.task == "regression":
            return [{"value": float(v)} for v in scores]
        names = [str(c) for c in self.target["classes"]]
        classes = self.target["classes"]
        answers = []
        for row in scores.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            answers.append(
                {"label": classes[best], "probabilities": dict(zip(names, row, strict=True))}
            )
        return answers


def load(
    store: ArtifactStore, uri: str, sha256: str, device: torch.device | None = None
) -> LoadedModel:
    prefix = store.key_of(uri)
    try:
        manifest = json.loads(store.get_bytes(f"{prefix}/{MANIFEST}"))
    except (ValueError, UnicodeDecodeError):
        raise ModelLoadError(f"the manifest of {uri} is not valid JSON") from None
    weights = store.get_bytes(f"{prefix}/{manifest.get('weights', WEIGHTS)}")
    actual = sha256_hex(weights)
    if actual != sha256 or manifest.get("sha256") != sha256:
        raise ModelLoadError(
            f"checksum mismatch for {uri}: the registry expects sha256 {sha256}, "
            f"the file has {actual}; refusing to load a changed model"
        )
    builder = BUILDERS.get(manifest.get("family", ""))
    if builder is None:
        raise ModelLoadError(f"{uri} names an unknown family {manifest.get('family')!r}")
    pre = builder.load_preprocessor(manifest["preprocessor"])
    module = builder.build(manifest["params"], pre, int(manifest["n_outputs"]))
    try:
        module.load_state_dict(load_safetensors(weights), strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"the weights of {uri} do not fit the model: {exc}") from None
    return LoadedModel(manifest, module.to(device or torch.device("cpu")).eval(), pre)

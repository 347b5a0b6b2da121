"""Models on disk: weights as safetensors, everything else in a JSON manifest.

Nothing is ever unpickled. A load checks the weights' sha256 against the manifest and
against the model registry, and refuses a file that matches neither; a stored model that
cannot be read for any other reason is refused too, always as ``ModelLoadError``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from shared.artifacts import ArtifactStore, sha256_hex
from shared.errors import BadData, ModelLoadError
from workers import tensors
from workers.families import BUILDERS, FamilyBuilder, Preprocessor
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
            from shared.errors import InvalidSpec
            from shared.validation import check_tensor_shape

            try:  # a job's inputs: wrong ones fail the job as bad data
                check_tensor_shape(inputs.get("shape"), self.manifest["input_schema"])
            except InvalidSpec as exc:
                raise BadData(exc.detail) from None
            return self.pre.encode(tensors.decode(inputs))  # type: ignore[arg-type]
        return self.pre.encode(inputs)

    def encode_rows(self, requests: Sequence[Sequence[Any]]) -> list[torch.Tensor] | None:
        """Several requests' feature rows encoded in one go, one tensor each; None when
        this model's preprocessing is not row by row (its encoding of one request could
        then depend on the others), or a request's rows are bad (encode each alone, to
        tell which)."""
        from workers.preprocess import Standardizer

        if not isinstance(self.pre, Standardizer):
            return None
        try:
            x = self.pre.encode([row for rows in requests for row in rows])
        except BadData:
            return None
        return list(torch.split(x, [len(rows) for rows in requests]))

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
    """The model stored at ``uri``, its weights checked against ``sha256`` (the registry's).

    Every way the stored model can be unreadable raises ModelLoadError naming ``uri``: a
    missing file, a checksum that differs, a manifest unlike what ``save`` writes, weights
    that are not safetensors or do not fit the model. A store that cannot be reached
    raises Unavailable (transient). The weights are only ever parsed as safetensors, so a
    pickle in their place is refused unread, even under a matching checksum.
    """
    prefix = store.key_of(uri)
    manifest = _manifest(_read(store, f"{prefix}/{MANIFEST}", uri), uri)
    weights = _read(store, f"{prefix}/{manifest['weights']}", uri)
    actual = sha256_hex(weights)
    if actual != sha256 or manifest["sha256"] != sha256:
        raise ModelLoadError(
            f"checksum mismatch for {uri}: the registry expects sha256 {sha256}, "
            f"the file has {actual}; refusing to load a changed model"
        )
    builder = BUILDERS.get(manifest["family"])
    if builder is None:
        raise ModelLoadError(f"{uri} names an unknown family {manifest['family']!r}")
    module, pre = _build(builder, manifest, uri)
    state = _decode(weights, uri)
    _check_fit(module, state, uri)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # a family's own load hook may refuse what fits by shape
        raise ModelLoadError(f"the weights of {uri} do not fit the model: {exc}") from None
    return LoadedModel(manifest, module.to(device or torch.device("cpu")).eval(), pre)


# What a store may raise, besides its own ModelLoadError, for an artifact it cannot hand
# over: a key it does not hold, a path that is a directory or may not be read, or (for a
# weights name taken from the manifest) a key that is not valid.
_UNREADABLE = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    KeyError,
    ValueError,
)

# The fields of a manifest that a load reads, and the JSON type of each. json.loads makes
# exactly these types (never a subclass), so ``type(v) is t`` also keeps a bool out of an int.
_FIELDS: dict[str, type] = {
    "format": int,
    "family": str,
    "params": dict,
    "task": str,
    "n_outputs": int,
    "preprocessor": dict,
    "target": dict,
    "input_schema": dict,
    "weights": str,
    "sha256": str,
}
_JSON_NAMES = {int: "an integer", str: "a string", dict: "an object"}


def _read(store: ArtifactStore, key: str, uri: str) -> bytes:
    try:
        return store.get_bytes(key)
    except _UNREADABLE as exc:
        raise ModelLoadError(f"cannot read {key!r} of {uri}: {exc!r}") from None


def _manifest(data: bytes, uri: str) -> dict[str, Any]:
    """The manifest, checked field by field before anything is built from it."""
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise ModelLoadError(f"the manifest of {uri} is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"the manifest of {uri} is not a JSON object")
    for field, kind in _FIELDS.items():
        if field not in manifest:
            raise ModelLoadError(f"the manifest of {uri} has no {field!r}")
        if type(manifest[field]) is not kind:
            raise ModelLoadError(f"in the manifest of {uri}, {field!r} is not {_JSON_NAMES[kind]}")
    if manifest["format"] != FORMAT:
        raise ModelLoadError(
            f"the manifest of {uri} has format {manifest['format']}; this worker reads {FORMAT}"
        )
    if not _head_fits(manifest["task"], manifest["target"], manifest["n_outputs"]):
        raise ModelLoadError(
            f"in the manifest of {uri}, the task {manifest['task']!r}, its target and "
            f"n_outputs {manifest['n_outputs']} do not agree"
        )
    return manifest


def _head_fits(task: str, target: dict[str, Any], n_outputs: int) -> bool:
    """Whether the answers can be made from the outputs (``LoadedModel.scores``)."""
    if task == "regression":
        numbers = [target.get("mean"), target.get("std")]
        return n_outputs == 1 and all(type(v) in (int, float) for v in numbers)
    classes = target.get("classes")
    if task != "classification" or not isinstance(classes, list) or len(classes) < 2:
        return False
    return n_outputs == len(classes) or (n_outputs == 1 and len(classes) == 2)


def _build(
    builder: FamilyBuilder, manifest: dict[str, Any], uri: str
) -> tuple[nn.Module, Preprocessor]:
    """The family's module and preprocessor, as the manifest describes them. Parameters are
    held to the family's schema (strict: no string for a number) before anything is built."""
    try:
        builder.family.params.model_validate(manifest["params"], strict=True)
        pre: Preprocessor = builder.load_preprocessor(manifest["preprocessor"])
        schema = builder.input_schema(pre)
        module: nn.Module = builder.build(manifest["params"], pre, manifest["n_outputs"])
    except ValidationError as exc:
        where = ".".join(str(part) for part in exc.errors()[0]["loc"])
        raise ModelLoadError(
            f"in the manifest of {uri}, params.{where} does not fit the {builder.name} "
            f"family: {exc.errors()[0]['msg']}"
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"the manifest of {uri} does not describe a {builder.name} model: {exc!r}"
        ) from None
    if schema != manifest["input_schema"]:
        raise ModelLoadError(
            f"in the manifest of {uri}, the input schema does not match the preprocessor"
        )
    return module, pre


def _decode(weights: bytes, uri: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; anything else (a pickle, a ``torch.save`` zip,
    stray bytes) is refused by the parser, which never runs code from the file."""
    try:
        return load_safetensors(weights)
    except SafetensorError as exc:
        raise ModelLoadError(f"the weights of {uri} are not a safetensors file: {exc}") from None
    except KeyError as exc:  # a dtype that safetensors reads and torch cannot hold
        raise ModelLoadError(f"the weights of {uri} hold a tensor of dtype {exc}") from None


def _check_fit(module: nn.Module, state: dict[str, torch.Tensor], uri: str) -> None:
    """The file holds exactly the model's tensors, each of the model's shape and dtype."""
    expected = module.state_dict()
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected)
    if missing or extra:
        raise ModelLoadError(
            f"the weights of {uri} do not fit the model: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    for name, tensor in state.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise ModelLoadError(
                f"the weights of {uri} do not fit the model: {name} is {tensor.dtype} "
                f"{list(tensor.shape)}, the model takes {want.dtype} {list(want.shape)}"
            )

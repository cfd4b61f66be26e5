"""Export an encoder to ONNX (dynamic batch axis, input PIXELS normalized float, output EMBEDDING) and check it.

The served NAME_encoder wraps this graph behind its normalization (onnx_wrappers.wrap_for_crops).

The check runs ONNX Runtime against the source network on the same random images, already
normalized as the encoder's preprocessing would, and reports the largest absolute difference.
Tolerance: float32 kernels sum in a different order in torch and ONNX Runtime, so differences
of a few ulps times the depth of the network are expected; we accept 1e-4 relative to the
largest embedding value (measured values are ~1e-6, see the tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import onnx
import torch

from .contract import EMBEDDING, PIXELS
from .encoders import EncoderSpec, Preprocess
from .encoders.registry import Network
from .runtime import ort_session

RELATIVE_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    path: Path
    sha256: str
    max_abs_diff: float
    reference_scale: float  # max |embedding| of the reference, the scale of the tolerance

    @property
    def within_tolerance(self) -> bool:
        return self.max_abs_diff <= RELATIVE_TOLERANCE * max(1.0, self.reference_scale)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def random_normalized_batch(pre: Preprocess, batch: int, seed: int = 0) -> np.ndarray:
    """Random 8-bit images pushed through the encoder's normalization, in its layout."""
    pixels = np.random.default_rng(seed).integers(0, 256, (batch, pre.size, pre.size, 3)).astype(np.float32)
    x = (pixels - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if pre.layout == "CHW" else x)


def _rename_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give an ONNX graph our I/O names and a symbolic batch axis."""
    renames = {model.graph.input[0].name: PIXELS, model.graph.output[0].name: EMBEDDING}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (model.graph.input[0], model.graph.output[0]):
        value.name = renames[value.name]
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


def _export_torch(module: torch.nn.Module, example: np.ndarray, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter prints its progress to stdout even with verbose=False; keep CLI output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            module, (torch.from_numpy(example),), str(path),
            input_names=[PIXELS], output_names=[EMBEDDING],
            dynamic_shapes=({0: batch},), external_data=False, dynamo=True, verbose=False,
        )


def _reference(network: Network, x: np.ndarray) -> np.ndarray:
    if isinstance(network, torch.nn.Module):
        with torch.no_grad():
            return network(torch.from_numpy(x)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source.onnx"
        onnx.save(network, str(source))
        session = ort_session(source)
        return session.run(None, {session.get_inputs()[0].name: x})[0]


def export_encoder(spec: EncoderSpec, network: Network, path: Path, check_batch: int = 3) -> ExportResult:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = random_normalized_batch(spec.preprocess, check_batch)
    reference = _reference(network, x)
    if isinstance(network, torch.nn.Module):
        _export_torch(network, random_normalized_batch(spec.preprocess, 2, seed=1), path)
    else:
        onnx.save(_rename_io(network), str(path))
    onnx.checker.check_model(str(path))
    served = ort_session(path).run([EMBEDDING], {PIXELS: x})[0]
    if served.shape != (check_batch, spec.dim):
        raise ValueError(f"exported {spec.name} gives shape {served.shape}, expected {(check_batch, spec.dim)}")
    return ExportResult(path=path, sha256=sha256_of(path),
                        max_abs_diff=float(np.abs(served - reference).max()),
                        reference_scale=float(np.abs(reference).max()))

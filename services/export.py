"""Export an encoder to ONNX (dynamic batch axis, input PIXELS normalized float, outputs EMBEDDING and,
where the encoder declares feature taps, FEATURES) and check it.

The served NAME_encoder wraps this graph behind its normalization (onnx_wrappers.wrap_for_crops).

The check runs ONNX Runtime against the source network on the same random images, already
normalized as the encoder's preprocessing would, and reports the largest absolute difference.
Tolerance: float32 kernels sum in a different order in torch and ONNX Runtime, so differences
of a few ulps times the depth of the network are expected; we accept 1e-4 relative to the
largest embedding value (measured values are ~1e-6, see the tests).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import onnx
import torch

from .contract import EMBEDDING, FEATURES, PIXELS
from .encoders import EncoderSpec, Preprocess
from .encoders.registry import Network
from .encoders.taps import TappedNetwork, exported_taps, tap_onnx, tapped_reference
from .files import sha256_of
from .runtime import ort_session

RELATIVE_TOLERANCE = 1e-4
# FEATURES' standard deviations are a one-pass float32 sqrt(E[x^2] - E[x]^2), held to a centred
# float64 reference (services/encoders/taps.py): cancellation on nearly constant channels measured
# up to 1.2e-3 of the largest value.
FEATURES_TOLERANCE = 5e-3


@dataclass
class ExportResult:
    path: Path
    sha256: str
    max_abs_diff: float  # EMBEDDING's
    reference_scale: float  # max |embedding| of the reference, the scale of the tolerance
    features_max_abs_diff: float = 0.0  # FEATURES', where the encoder taps blocks
    features_scale: float = 0.0

    @property
    def within_tolerance(self) -> bool:
        return (self.max_abs_diff <= RELATIVE_TOLERANCE * max(1.0, self.reference_scale)
                and self.features_max_abs_diff <= FEATURES_TOLERANCE * max(1.0, self.features_scale))



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


def output_names(spec: EncoderSpec) -> list[str]:
    """The exported graph's outputs, in order: EMBEDDING, then FEATURES where the spec taps blocks."""
    return [EMBEDDING, FEATURES] if spec.features else [EMBEDDING]


def _export_torch(module: torch.nn.Module, example: np.ndarray, path: Path, outputs: list[str]) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter prints its progress to stdout even with verbose=False; keep CLI output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            module, (torch.from_numpy(example),), str(path),
            input_names=[PIXELS], output_names=outputs,
            dynamic_shapes=({0: batch},), external_data=False, dynamo=True, verbose=False,
        )


def _reference(network, x: np.ndarray) -> list[np.ndarray]:
    """The source network's outputs: a torch module (or a tapped reference callable) or an ONNX graph."""
    if callable(network):
        with torch.no_grad():
            out = network(torch.from_numpy(x))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source.onnx"
        onnx.save(network, str(source))
        session = ort_session(source)
        return session.run(None, {session.get_inputs()[0].name: x})


def export_encoder(spec: EncoderSpec, network: Network, path: Path, check_batch: int = 3) -> ExportResult:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs = output_names(spec)
    if isinstance(network, torch.nn.Module) and spec.features is not None:
        network = TappedNetwork(network, spec.features).eval()  # one set of hooks: reference and export
    x = random_normalized_batch(spec.preprocess, check_batch)
    reference = _reference(tapped_reference(spec, network), x)
    if isinstance(network, torch.nn.Module):
        if spec.features is None:
            _export_torch(network, random_normalized_batch(spec.preprocess, 2, seed=1), path, outputs)
        else:  # the blocks' activations as outputs, then the statistics as ONNX nodes (encoders/taps.py)
            taps = exported_taps(spec.features)
            _export_torch(network, random_normalized_batch(spec.preprocess, 2, seed=1), path,
                          [EMBEDDING, *(block for block, _ in taps.blocks)])
            onnx.save(tap_onnx(onnx.load(str(path)), taps, FEATURES, drop_tapped_outputs=True), str(path))
    else:
        if spec.features is not None:
            network = tap_onnx(network, spec.features, FEATURES)
        onnx.save(_rename_io(network), str(path))
    onnx.checker.check_model(str(path))
    served = ort_session(path).run(outputs, {PIXELS: x})
    for name, array, dim in zip(outputs, served, (spec.dim, spec.feature_dim)):
        if array.shape != (check_batch, dim):
            raise ValueError(f"exported {spec.name} gives {name} of shape {array.shape}, expected {(check_batch, dim)}")
    return ExportResult(path=path, sha256=sha256_of(path),
                        max_abs_diff=float(np.abs(served[0] - reference[0]).max()),
                        reference_scale=float(np.abs(reference[0]).max()),
                        **({"features_max_abs_diff": float(np.abs(served[1] - reference[1]).max()),
                            "features_scale": float(np.abs(reference[1]).max())} if spec.features else {}))

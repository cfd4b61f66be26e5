"""Export an encoder to ONNX (dynamic batch axis, input PIXELS, output EMBEDDING) and check it.

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

from .encoders import EncoderSpec, Preprocess
from .encoders.registry import Network
from .runtime import ort_session

INPUT_NAME = "PIXELS"
OUTPUT_NAME = "EMBEDDING"
VERSIONS_OUTPUT = "EMBEDDINGS"
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
    renames = {model.graph.input[0].name: INPUT_NAME, model.graph.output[0].name: OUTPUT_NAME}
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
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
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
    served = ort_session(path).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    if served.shape != (check_batch, spec.dim):
        raise ValueError(f"exported {spec.name} gives shape {served.shape}, expected {(check_batch, spec.dim)}")
    return ExportResult(path=path, sha256=sha256_of(path),
                        max_abs_diff=float(np.abs(served - reference).max()),
                        reference_scale=float(np.abs(reference).max()))


EXTRA_INPUT = "EXTRA"
ROWS_INPUT = "ROWS"


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def wrap_for_versions(source: Path, out: Path, pre: Preprocess, versions: int, extra: int = 0) -> Path:
    """The encoder over K versions per image: uint8 crops PIXELS [B, K, S, S, 3] -> EMBEDDINGS [B, K, D].

    In front of the unchanged encoder graph: flatten the versions into the batch, then the
    normalization DALI would otherwise do ((x - mean) / std, HWC -> the encoder's layout); after
    it, a Reshape back to [B, K, D]. Every version of every image in a batch goes through one
    encoder call, and the steps before hand on uint8 instead of four times the bytes in float.
    With `extra` > 0 a second input EXTRA [B, extra, S, S, 3] (versions made by style networks)
    is appended after the K versions.

    ROWS INT32 [B, R] picks the versions to encode (a refresh computes only the columns a store
    lacks): each image's own rows are gathered (GatherND, batch_dims=1, so the requests of one
    dynamic batch may ask for different rows of the same count) before the encoder, and the output
    is [B, R, D]. ROWS is an initializer that is also a graph input: left out, it defaults to every
    row, so callers that only pass PIXELS get all K + extra.
    """
    model = onnx.load(str(source))
    graph = model.graph
    flat_in, flat_out = "flat_" + INPUT_NAME, "flat_" + OUTPUT_NAME
    for node in graph.node:
        node.input[:] = [flat_in if n == INPUT_NAME else n for n in node.input]
        node.output[:] = [flat_out if n == OUTPUT_NAME else n for n in node.output]
    crop_dims = [pre.size, pre.size, 3]
    dim = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    rows = versions + extra
    graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array([-1, *crop_dims], np.int64), "versions_flat_shape"),
        onnx.numpy_helper.from_array(np.array([dim], np.int64), "embedding_dim"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
        onnx.numpy_helper.from_array(np.array([0], np.int64), "zero"),
        onnx.numpy_helper.from_array(np.array([2], np.int64), "index_axis"),
        onnx.numpy_helper.from_array(np.arange(rows, dtype=np.int32)[None], ROWS_INPUT),
        onnx.numpy_helper.from_array(np.array(pre.mean, np.float32), "pixel_mean"),
        onnx.numpy_helper.from_array(np.array(pre.std, np.float32), "pixel_std"),
    ])
    inputs = [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.UINT8, ["batch", versions, *crop_dims])]
    stacked = INPUT_NAME
    head = []
    if extra:
        inputs.append(onnx.helper.make_tensor_value_info(EXTRA_INPUT, onnx.TensorProto.UINT8,
                                                         ["batch", extra, *crop_dims]))
        head.append(onnx.helper.make_node("Concat", [INPUT_NAME, EXTRA_INPUT], ["all_versions"], axis=1))
        stacked = "all_versions"
    inputs.append(onnx.helper.make_tensor_value_info(ROWS_INPUT, onnx.TensorProto.INT32, ["batch", "rows"]))
    node = onnx.helper.make_node
    head += [node("Shape", [stacked], ["stacked_shape"]),
             node("Slice", ["stacked_shape", "zero", "one"], ["batch_size"]),
             node("Concat", ["batch_size", "one"], ["rows_broadcast"], axis=0),
             node("Cast", [ROWS_INPUT], ["rows_int64"], to=onnx.TensorProto.INT64),
             node("Expand", ["rows_int64", "rows_broadcast"], ["rows_per_image"]),  # the default's [1, R] too
             node("Unsqueeze", ["rows_per_image", "index_axis"], ["rows_index"]) if _opset(model) >= 13
             else node("Unsqueeze", ["rows_per_image"], ["rows_index"], axes=[2]),
             node("GatherND", [stacked, "rows_index"], ["picked"], batch_dims=1),
             node("Shape", ["rows_per_image"], ["picked_shape"]),
             node("Concat", ["picked_shape", "embedding_dim"], ["versions_shape"], axis=0)]
    stacked = "picked"
    normalized = "normalized_hwc" if pre.layout == "CHW" else flat_in
    head += [onnx.helper.make_node("Reshape", [stacked, "versions_flat_shape"], ["flat_u8"]),
             onnx.helper.make_node("Cast", ["flat_u8"], ["flat_float"], to=onnx.TensorProto.FLOAT),
             onnx.helper.make_node("Sub", ["flat_float", "pixel_mean"], ["centred"]),
             onnx.helper.make_node("Div", ["centred", "pixel_std"], [normalized])]
    if pre.layout == "CHW":
        head.append(onnx.helper.make_node("Transpose", [normalized], [flat_in], perm=[0, 3, 1, 2]))
    for i, node in enumerate(head):
        graph.node.insert(i, node)
    graph.node.append(onnx.helper.make_node("Reshape", [flat_out, "versions_shape"], [VERSIONS_OUTPUT]))
    del graph.input[:]
    graph.input.extend(inputs)
    graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info(
        VERSIONS_OUTPUT, onnx.TensorProto.FLOAT, ["batch", "rows", dim]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return Path(out)


STYLE_INPUT, STYLE_OUTPUT = "CANVAS", "STYLED"


def wrap_style_network(source: Path, out: Path) -> Path:
    """A user's fast-neural-style network between uint8 canvases: CANVAS [B, H, W, 3] -> STYLED.

    The network follows the usual fast-neural-style convention: float32 RGB [N, 3, H, W] in
    0..255 in, the same out. Its output is rounded and clipped back to uint8 HWC.
    """
    net = onnx.compose.add_prefix(onnx.load(str(source)), "net/")
    graph = net.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError(f"{source}: a style network needs exactly one input and one output")
    net_in, net_out = graph.input[0].name, graph.output[0].name
    graph.initializer.extend([onnx.numpy_helper.from_array(np.array(v, np.float32), n)
                              for n, v in (("style_low", 0.0), ("style_high", 255.0))])
    graph.node.insert(0, onnx.helper.make_node("Cast", [STYLE_INPUT], ["canvas_float"], to=onnx.TensorProto.FLOAT))
    graph.node.insert(1, onnx.helper.make_node("Transpose", ["canvas_float"], [net_in], perm=[0, 3, 1, 2]))
    graph.node.extend([
        onnx.helper.make_node("Round", [net_out], ["styled_round"]),
        onnx.helper.make_node("Clip", ["styled_round", "style_low", "style_high"], ["styled_clip"]),
        onnx.helper.make_node("Transpose", ["styled_clip"], ["styled_hwc"], perm=[0, 2, 3, 1]),
        onnx.helper.make_node("Cast", ["styled_hwc"], [STYLE_OUTPUT], to=onnx.TensorProto.UINT8),
    ])
    del graph.input[:], graph.output[:]
    graph.input.append(onnx.helper.make_tensor_value_info(STYLE_INPUT, onnx.TensorProto.UINT8, ["batch", "h", "w", 3]))
    graph.output.append(onnx.helper.make_tensor_value_info(STYLE_OUTPUT, onnx.TensorProto.UINT8, ["batch", "h", "w", 3]))
    onnx.checker.check_model(net)
    onnx.save(net, str(out))
    return Path(out)

"""ONNX graphs wrapped for serving: the encoder behind its normalization, and style networks.

Both take and give uint8 HWC images, so the steps in front of them (DALI) hand on a quarter of
the bytes of a normalized float tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .contract import CANVAS, EMBEDDING, PIXELS, STYLED
from .encoders import Preprocess


def wrap_for_crops(source: Path, out: Path, pre: Preprocess) -> Path:
    """NAME_encoder as served: uint8 crops PIXELS [B, S, S, 3] -> normalize -> encoder -> EMBEDDING [B, D].

    In front of the unchanged exported graph (services/export.py, input PIXELS in float), the
    normalization DALI would otherwise do: (x - mean) / std, then HWC -> the encoder's layout.
    The one encoder model of an encoder, so NAME_embed, NAME_versions (every expansion) and
    NAME_detector all send it the same uint8 crops.
    """
    model = onnx.load(str(source))
    graph = model.graph
    normalized_in = "normalized_" + PIXELS
    for node in graph.node:
        node.input[:] = [normalized_in if n == PIXELS else n for n in node.input]
    # Measured with ONNX Runtime 1.32 on squeezenet1_1 (CPU ms per image, batch 32): Cast, Sub and
    # Div broadcast over the last axis of 3, then Transpose, cost 10.6 against 8.4 for the bare
    # graph; transposing the uint8 bytes first and normalizing per channel in the encoder's own
    # layout, with a multiplication by 1/std, costs 8.0. Same values within float rounding.
    channel_shape = (1, 3, 1, 1) if pre.layout == "CHW" else (3,)
    graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array(pre.mean, np.float32).reshape(channel_shape), "pixel_mean"),
        onnx.numpy_helper.from_array((1 / np.array(pre.std, np.float64)).astype(np.float32).reshape(channel_shape),
                                     "pixel_inverse_std")])
    node = onnx.helper.make_node
    laid_out = PIXELS
    head = []
    if pre.layout == "CHW":
        head.append(node("Transpose", [PIXELS], ["pixels_chw"], perm=[0, 3, 1, 2]))
        laid_out = "pixels_chw"
    head += [node("Cast", [laid_out], ["pixels_float"], to=onnx.TensorProto.FLOAT),
             node("Sub", ["pixels_float", "pixel_mean"], ["centred"]),
             node("Mul", ["centred", "pixel_inverse_std"], [normalized_in])]
    for i, n in enumerate(head):
        graph.node.insert(i, n)
    del graph.input[:]
    graph.input.append(onnx.helper.make_tensor_value_info(PIXELS, onnx.TensorProto.UINT8,
                                                          ["batch", pre.size, pre.size, 3]))
    assert graph.output[0].name == EMBEDDING
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return Path(out)


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
    graph.node.insert(0, onnx.helper.make_node("Cast", [CANVAS], ["canvas_float"], to=onnx.TensorProto.FLOAT))
    graph.node.insert(1, onnx.helper.make_node("Transpose", ["canvas_float"], [net_in], perm=[0, 3, 1, 2]))
    graph.node.extend([
        onnx.helper.make_node("Round", [net_out], ["styled_round"]),
        onnx.helper.make_node("Clip", ["styled_round", "style_low", "style_high"], ["styled_clip"]),
        onnx.helper.make_node("Transpose", ["styled_clip"], ["styled_hwc"], perm=[0, 2, 3, 1]),
        onnx.helper.make_node("Cast", ["styled_hwc"], [STYLED], to=onnx.TensorProto.UINT8),
    ])
    del graph.input[:], graph.output[:]
    graph.input.append(onnx.helper.make_tensor_value_info(CANVAS, onnx.TensorProto.UINT8, ["batch", "h", "w", 3]))
    graph.output.append(onnx.helper.make_tensor_value_info(STYLED, onnx.TensorProto.UINT8, ["batch", "h", "w", 3]))
    onnx.checker.check_model(net)
    onnx.save(net, str(out))
    return Path(out)

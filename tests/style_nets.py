"""A tiny random-weight fast-neural-style network, built directly as ONNX, for tests."""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_style_network(path: Path, seed: int = 0) -> Path:
    """float32 RGB [N, 3, H, W] in 0..255 -> the same shape, 0..255 (conv, relu, conv, sigmoid)."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 0.05, (8, 3, 3, 3)), "b1": np.zeros(8), "w2": rng.normal(0, 0.3, (3, 8, 3, 3)),
        "b2": np.zeros(3), "scale_in": np.array(1 / 255), "scale_out": np.array(255.0),
    }
    initializers = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()]
    nodes = [
        helper.make_node("Mul", ["input", "scale_in"], ["x"]),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("Mul", ["s2", "scale_out"], ["output"]),
    ]
    shape = ["n", 3, "h", "w"]
    graph = helper.make_graph(nodes, "tiny_style", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)

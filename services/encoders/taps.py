"""FEATURES: pooled statistics of an encoder's early blocks, computed beside EMBEDDING in one pass.

The statistics are those of registry.FeatureTaps: per channel, the mean then the standard
deviation over space, block after block. They are written once, as ONNX nodes (`tap_onnx`), for
both kinds of network: an ONNX graph gets them on the declared tensors; a torch module is
exported with its declared blocks' activations as extra outputs (`TappedNetwork`, forward hooks),
which `tap_onnx` then turns into FEATURES and drops. `pooled_statistics` is the torch reference
the export is checked against.

The served standard deviation is the one-pass sqrt(E[x^2] - E[x]^2) in float32: a channel
nearly constant over space loses digits to cancellation (measured: up to 1.2e-3 of FEATURES'
largest value on efficientnet_lite2, against the centred float64 reference), which is why
FEATURES has its own export tolerance (services/export.py). Centring first costs a second
pass (squeezenet1_1's encoder 7.2 -> 8.5 CPU ms per crop, measured) for digits a probe that
standardizes its inputs does not use; store and server run the same graph, so they agree exactly.

Why GlobalAveragePool on NCHW blocks: ONNX Runtime runs convolutions in a blocked channel layout
(NCHWc) and must convert a tensor back before an op that layout lacks. Taken with ReduceMean,
squeezenet1_1's taps cost a conversion of each whole activation map (CPU ms per crop 4.6 ->
9.4, measured); GlobalAveragePool and Mul stay in the blocked layout and only [B, C, 1, 1]
results are converted.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import torch

from .registry import EncoderSpec, FeatureTaps

TAP = "tap_{}"  # a torch network's exported activation outputs, before tap_onnx replaces them
STATISTICS = "tap{}_"  # the prefix of the tensors tap_onnx adds for block i


def pooled_statistics(activation: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 2C] float32: per-channel mean over space, then the (population) standard
    deviation, computed in float64: the reference the served one-pass float32 statistics are held to."""
    x = activation.double()
    mean = x.mean(dim=(2, 3))
    std = (x - mean[:, :, None, None]).pow(2).mean(dim=(2, 3)).sqrt()
    return torch.cat([mean, std], dim=1).float()


class TappedNetwork(torch.nn.Module):
    """A torch encoder that also returns its declared blocks' activations: (embedding, *activations).
    `features(x)` is the reference: (embedding, FEATURES) computed in torch."""

    def __init__(self, network: torch.nn.Module, taps: FeatureTaps):
        super().__init__()
        self.network, self.taps = network, taps
        self._seen: dict[str, torch.Tensor] = {}
        for block, _ in taps.blocks:
            module = network.get_submodule(block)  # a wrong path fails here, at build time
            module.register_forward_hook(self._keeper(block))

    def _keeper(self, block: str):
        def keep(module, inputs, output):
            self._seen[block] = output
        return keep

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._seen.clear()
        embedding = self.network(x)
        activations = tuple(self._seen[block] for block, _ in self.taps.blocks)
        self._seen.clear()
        return (embedding, *activations)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, *activations = self(x)
        return embedding, torch.cat([pooled_statistics(a) for a in activations], dim=1)


def tap_onnx(model: onnx.ModelProto, taps: FeatureTaps, features: str, drop_tapped_outputs: bool = False
             ) -> onnx.ModelProto:
    """The statistics added to an ONNX graph as an output `features` ([batch, taps.dim]); with
    `drop_tapped_outputs`, the tapped tensors stop being graph outputs (a torch export's)."""
    graph = model.graph
    node = onnx.helper.make_node
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if taps.layout == "NCHW":
        def spatial_mean(x, y):  # [B, C, H, W] -> [B, C]
            return [node("GlobalAveragePool", [x], [y + "_4d"]), node("Flatten", [y + "_4d"], [y], axis=1)]
    elif opset >= 18:  # ReduceMean takes its axes as an input from opset 18, as an attribute before
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 2], np.int64), "tap_spatial_axes"))

        def spatial_mean(x, y):
            return [node("ReduceMean", [x, "tap_spatial_axes"], [y], keepdims=0)]
    else:
        def spatial_mean(x, y):
            return [node("ReduceMean", [x], [y], axes=[1, 2], keepdims=0)]
    produced = {o for n in graph.node for o in n.output}
    parts = []
    for i, (block, _) in enumerate(taps.blocks):
        if block not in produced:
            raise ValueError(f"the ONNX graph has no tensor {block!r} to tap")
        p = STATISTICS.format(i)
        graph.node.extend([  # var = E[x^2] - E[x]^2, clamped at 0 (as pooled_statistics)
            *spatial_mean(block, p + "mean"),
            node("Mul", [block, block], [p + "squared"]),
            *spatial_mean(p + "squared", p + "mean_square"),
            node("Mul", [p + "mean", p + "mean"], [p + "square_mean"]),
            node("Sub", [p + "mean_square", p + "square_mean"], [p + "var_raw"]),
            node("Relu", [p + "var_raw"], [p + "var"]),
            node("Sqrt", [p + "var"], [p + "std"]),
        ])
        parts += [p + "mean", p + "std"]
    graph.node.append(node("Concat", parts, [features], axis=1))
    if drop_tapped_outputs:
        tapped = {block for block, _ in taps.blocks}
        kept = [o for o in graph.output if o.name not in tapped]
        del graph.output[:]
        graph.output.extend(kept)
    graph.output.append(onnx.helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT, ["batch", taps.dim]))
    return model


def tap_nodes(model: onnx.ModelProto, features: str) -> list[onnx.NodeProto]:
    """The nodes tap_onnx added to a graph: those writing its statistics' tensors or `features`
    (not the network's nodes whose outputs a torch export named TAP)."""
    added = re.compile(re.escape(STATISTICS).replace(r"\{\}", r"\d+"))
    return [n for n in model.graph.node if n.output and all(o == features or added.match(o) for o in n.output)]


def tapped_tensors(model: onnx.ModelProto, features: str) -> set[str]:
    """The network's tensors the tap nodes read (the tapped blocks' outputs, as the graph names them)."""
    taps = tap_nodes(model, features)
    made_by_taps = {name for node in taps for name in node.output}
    return {name for node in taps for name in node.input if name not in made_by_taps}


def exported_taps(taps: FeatureTaps) -> FeatureTaps:
    """A torch network's taps as the names of its exported activation outputs."""
    return FeatureTaps(tuple((TAP.format(i), channels) for i, (_, channels) in enumerate(taps.blocks)), taps.layout)


def tapped_reference(spec: EncoderSpec, network):
    """What the export is checked against: for an encoder with taps, a callable x -> (embedding,
    features) whose statistics are computed in torch from the source network's own activations
    (an ONNX graph's tapped tensors read with ONNX Runtime); the network itself otherwise."""
    if spec.features is None:
        return network
    if isinstance(network, TappedNetwork):
        return network.features
    if isinstance(network, torch.nn.Module):
        return TappedNetwork(network, spec.features).eval().features
    import onnxruntime as ort

    source = onnx.ModelProto()
    source.CopyFrom(network)
    blocks = [block for block, _ in spec.features.blocks]
    source.graph.output.extend(onnx.helper.make_tensor_value_info(b, onnx.TensorProto.FLOAT, None) for b in blocks)
    session = ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"])

    def reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, *activations = session.run([source.graph.output[0].name, *blocks],
                                              {session.get_inputs()[0].name: x.numpy()})
        as_nchw = [torch.from_numpy(a if spec.features.layout == "NCHW" else a.transpose(0, 3, 1, 2))
                   for a in activations]
        return torch.from_numpy(embedding), torch.cat([pooled_statistics(a) for a in as_nchw], dim=1)
    return reference

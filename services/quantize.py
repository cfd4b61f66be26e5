"""An INT8 NAME_encoder: static quantization calibrated on the built-in corpus, and its parity.

Portable flavour: ONNX Runtime's static quantization (QDQ, per-channel int8 weights, uint8
activations: the U8S8 kernels ONNX Runtime uses on x86 with VNNI; S8S8 measured no faster than
FP32 here) of the served graph (services/onnx_wrappers.wrap_for_crops) with its uint8 head
(transpose, cast, (x - mean) * 1/std) left as is: the first QuantizeLinear takes the
normalized pixels. Native flavour: the same calibration run over the FP32 graph gives the
table TensorRT's INT8 mode reads (ONNX Runtime's `calibration.flatbuffers`); the model stays
FP32 there (a table and Q/DQ nodes exclude each other in the onnxruntime backend). The FEATURES
statistics (services/encoders/taps.py: means, squares, square roots of the tapped blocks) and the
nodes whose outputs they read stay in float: quantized, they cost squeezenet1_1 its gate
(embedding cosine 1st percentile 0.9488 on 164 test crops, FEATURES standardized 0.833 (1st percentiles); the
statistics alone in float 0.9488 and 0.9698; with the tapped nodes 0.9777 and 0.9743, measured).

Calibration images are given as encoded bytes (services import no clients): `equiprobe
build-repo --precision int8` passes corpus crops of TRAIN sources for calibration and of TEST
sources for parity (trainer/int8_parity.py), preprocessed here by NAME_preprocess's own DALI
pipeline (a CPU twin, so the native flavour calibrates on the same pixels). The detector's
parity (probes trained on FP32 embeddings) needs the trainer: trainer/int8_parity.py, passed to
services.repository.build_repo as a callback.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from .contract import FEATURES, PIXELS

if TYPE_CHECKING:
    from .encoders import Preprocess

PRECISIONS = ("fp32", "int8")
METHOD = "onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 activations, MinMax calibration"


def trt_calibration_table(encoder: str) -> str:
    """ONNX Runtime's TensorRT table, in NAME_encoder/1/. Named per encoder: the onnxruntime backend
    reads every table from the one trt_engine_cache_path, where deploy/k8s/triton.yaml's init
    container copies them all."""
    return f"{encoder}_calibration.flatbuffers"


class ParityError(ValueError):
    """The INT8 encoder is not close enough to FP32; `figures` holds what was measured."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


@dataclass(frozen=True)
class ParityThresholds:
    """The gate: cosine to FP32 on held-out crops (median at least `cosine_median`, 1st percentile
    at least `cosine_p1`), the same of FEATURES standardized by the FP32 crops' column statistics
    (what a probe reading them sees), and the detector's held-out AUC and 31-way accuracy within
    the deltas."""

    cosine_median: float = 0.99
    cosine_p1: float = 0.95  # a floor for the tail; the trial measured min 0.963
    features_median: float = 0.99
    features_p1: float = 0.95
    auc_delta: float = 0.01
    accuracy_delta: float = 0.01


@dataclass(frozen=True)
class Int8Options:
    """Sizes of the calibration and of the parity checks (stated in the manifest and the output)."""

    calibration_images: int = 64  # TRAIN-split corpus crops
    parity_images: int = 164  # TEST-split corpus crops for the cosine (2 per test source)
    detector_images: tuple[int, int, int] = (196, 50, 82)  # train, validation, test corpus crops, 31 versions each
    thresholds: ParityThresholds = ParityThresholds()
    accept_parity_failure: bool = False  # an explicit override, recorded in the manifest


# -- corpus crops, as NAME_preprocess makes them -------------------------------------------------

class CpuTwin:
    """NAME_preprocess's pipeline serialized for the CPU (whatever the flavour) and run here."""

    def __init__(self, pre: "Preprocess", batch: int = 32, threads: int = 2):
        from .pipelines import CpuPreprocessor, serialize_preprocess

        with tempfile.TemporaryDirectory() as tmp:
            path = serialize_preprocess(pre, Path(tmp) / "model.dali", device="cpu", max_batch_size=batch,
                                        num_threads=threads)
            self.preprocessor = CpuPreprocessor(path, batch, threads)

    def __call__(self, encoded: Iterable[bytes]) -> np.ndarray:
        from .uploads import admit

        return self.preprocessor.run([np.frombuffer(admit(data).data, np.uint8) for data in encoded])


# -- quantization ----------------------------------------------------------------------------

class CropReader:
    """ONNX Runtime's CalibrationDataReader over uint8 crops, in batches."""

    def __init__(self, crops: np.ndarray, batch: int = 16):
        self.batches = iter([{PIXELS: crops[i:i + batch]} for i in range(0, len(crops), batch)])

    def get_next(self) -> Optional[dict]:
        return next(self.batches, None)


def _named_float_nodes(source: Path, out: Path) -> list[str]:
    """Copy the served graph with the nodes that stay in float named; returns their names, for
    nodes_to_exclude: the head (everything before the exported encoder's first node reads the
    normalized pixels), the FEATURES statistics and the nodes whose outputs they tap
    (squeezenet1_1 taps conv1 before its ReLU, so a quantized conv1 output spans its negative
    range too: measured, the gate failed until both conv1 and the statistics stayed in float)."""
    import onnx

    from .encoders.taps import tap_nodes, tapped_tensors

    model = onnx.load(str(source))
    head = []
    for node in model.graph.node:
        if any(name == "normalized_" + PIXELS for name in node.input):
            break
        head.append(node)
    tapped = tapped_tensors(model, FEATURES)
    blocks = [node for node in model.graph.node if set(node.output) & tapped]
    kept = head + blocks + tap_nodes(model, FEATURES)
    for i, node in enumerate(kept):
        node.name = node.name or f"float_{i}_{node.op_type.lower()}"
    onnx.save(model, str(out))
    return [node.name for node in kept]


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantization tools warn through the root logger (pre-processing advice that
    does not apply: the exported graph has its shapes); keep the build's output to its figures."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_encoder(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
    """The served FP32 graph -> its static INT8 twin at `out`, calibrated on `calibration` crops."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / "named.onnx"
        kept_float = _named_float_nodes(fp32, named)
        with _quiet_root_logger():
            quantize_static(str(named), str(out), CropReader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=kept_float)
    return Path(out)


def write_trt_calibration(fp32: Path, calibration: np.ndarray, out: Path) -> Path:
    """TensorRT's INT8 table (ONNX Runtime's flatbuffers format) for the served FP32 graph, from
    the same calibration crops: every float tensor's largest magnitude."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, write_calibration_table

    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(str(fp32), [], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        with _quiet_root_logger():
            calibrator.collect_data(CropReader(calibration))
            write_calibration_table(calibrator.compute_data().data, dir=tmp)
        out = Path(out)
        shutil.move(str(Path(tmp) / "calibration.flatbuffers"), out)
    return out


# -- parity -----------------------------------------------------------------------------------

def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def cosine_figures(fp32: np.ndarray, int8: np.ndarray) -> dict:
    c = cosines(fp32, int8)
    return {"images": int(len(c)), "median": float(np.median(c)), "p1": float(np.percentile(c, 1)),
            "min": float(c.min()), "mean": float(c.mean())}


def encode_crops(model: Path, crops: np.ndarray, batch: int = 32, threads: int = 2) -> list[np.ndarray]:
    """Every output of the encoder graph on the crops: [EMBEDDING] or [EMBEDDING, FEATURES]."""
    from .runtime import ort_session

    session = ort_session(model, threads)
    runs = [session.run(None, {PIXELS: crops[i:i + batch]}) for i in range(0, len(crops), batch)]
    return [np.concatenate([run[k] for run in runs]) for k in range(len(runs[0]))]


def parity_figures(fp32: Path, int8: Path, crops: np.ndarray) -> dict:
    """On the same (held-out) crops: the cosine of the INT8 embeddings to the FP32 ones and, for an
    encoder with FEATURES, of its FEATURES once both are standardized by the FP32 crops' column
    means and deviations (raw, the largest channels would hide the rest)."""
    reference, quantized = encode_crops(fp32, crops), encode_crops(int8, crops)
    figures = {"cosine": cosine_figures(reference[0], quantized[0])}
    if len(reference) > 1:
        mean, std = reference[1].mean(0), reference[1].std(0) + 1e-6
        figures["features"] = cosine_figures((reference[1] - mean) / std, (quantized[1] - mean) / std)
    return figures


def gate_failures(figures: dict, thresholds: ParityThresholds) -> list[str]:
    """What fails the gate, one line each (empty: the INT8 encoder passes)."""
    failures = []
    cosine = figures["cosine"]
    if cosine["median"] < thresholds.cosine_median:
        failures.append(f"cosine to FP32: median {cosine['median']:.4f} < {thresholds.cosine_median}")
    if cosine["p1"] < thresholds.cosine_p1:
        failures.append(f"cosine to FP32: 1st percentile {cosine['p1']:.4f} < {thresholds.cosine_p1}")
    features = figures.get("features")
    if features and features["median"] < thresholds.features_median:
        failures.append(f"FEATURES cosine to FP32: median {features['median']:.4f} < {thresholds.features_median}")
    if features and features["p1"] < thresholds.features_p1:
        failures.append(f"FEATURES cosine to FP32: 1st percentile {features['p1']:.4f} < {thresholds.features_p1}")
    detector = figures.get("detector")
    if detector:
        for metric, limit in (("auc", thresholds.auc_delta), ("accuracy", thresholds.accuracy_delta)):
            delta = detector[f"{metric}_int8"] - detector[f"{metric}_fp32"]
            if abs(delta) > limit:
                failures.append(f"detector {metric}: INT8 {detector[f'{metric}_int8']:.4f} vs FP32 "
                                f"{detector[f'{metric}_fp32']:.4f} (|delta| {abs(delta):.4f} > {limit})")
    return failures


def parity_summary(figures: dict) -> str:
    """One line of the figures, for the build's output."""
    c = figures["cosine"]
    line = (f"cosine to FP32 on {c['images']} held-out crops: median {c['median']:.4f}, 1st percentile "
            f"{c['p1']:.4f}, min {c['min']:.4f}")
    f = figures.get("features")
    if f:
        line += f"; FEATURES (standardized) median {f['median']:.4f}, 1st percentile {f['p1']:.4f}"
    d = figures.get("detector")
    if d:
        line += (f"; detector on {d['test_images']} held-out images x {d['versions']} versions: AUC "
                 f"{d['auc_fp32']:.4f} FP32 / {d['auc_int8']:.4f} INT8, 31-way accuracy {d['accuracy_fp32']:.4f} / "
                 f"{d['accuracy_int8']:.4f}")
    return line


def options_record(options: Int8Options) -> dict:
    return {**asdict(options), "detector_images": dict(zip(("train", "validation", "test"), options.detector_images))}

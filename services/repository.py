"""Render a Triton model repository for one encoder, in either flavour, from one spec.

    image_gate       python:        upload -> checked bytes DALI can decode (services/uploads.py)
    NAME_preprocess  DALI pipeline: encoded bytes -> normalized pixels
    NAME_encoder     ONNX model:    pixels -> embedding
    NAME_embed       ensemble:      IMAGE (bytes) -> image_gate -> NAME_preprocess -> NAME_encoder -> EMBEDDING

`portable` runs both steps in python-backend models (DALI and ONNX Runtime on the CPU), which
is what this machine and CI serve. `native` is for NVIDIA's Triton container on GPUs: the dali
backend with mixed decoding and the onnxruntime backend with the TensorRT accelerator. The
artifacts (model.dali, model.onnx) are produced the same way for both; configs are built as
Triton's own ModelConfig protobuf messages, so they follow its schema by construction.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .encoders import EncoderSpec, get_encoder
from .export import INPUT_NAME as PIXELS, OUTPUT_NAME as EMBEDDING, ExportResult, export_encoder
from .files import write_atomically
from .pipelines import INPUT_NAME as IMAGE, serialize_preprocess
from .uploads import MAX_PIXELS, MAX_REQUEST_MB

Flavour = Literal["portable", "native"]
GATE = "image_gate"  # one per repository, in front of every model that takes an upload
CHECKED = "image"  # the ensemble tensor the gate hands on
PYTHON_MODELS = Path(__file__).parent / "python_models"
MANIFEST = "equiprobe.json"


@dataclass(frozen=True)
class ServingSpec:
    """Batching and threading knobs, shared by both flavours where they apply."""

    max_batch_size: int = 32
    queue_delay_us: int = 2000
    dali_threads: int = 2
    ort_threads: int = 2
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    trt_cache_path: str = "/tmp/equiprobe_trt_cache"
    # Uploads over these are refused by image_gate with an error that names the cap.
    max_request_mb: int = MAX_REQUEST_MB
    max_pixels: int = MAX_PIXELS


@dataclass
class ModelNames:
    encoder: str

    @property
    def preprocess(self) -> str:
        return f"{self.encoder}_preprocess"

    @property
    def onnx(self) -> str:
        return f"{self.encoder}_encoder"

    @property
    def embed(self) -> str:
        return f"{self.encoder}_embed"


class InProcessEmbed:
    """NAME_embed's two steps from a repository's own files (model.dali, model.onnx), run in this
    process: the reference the served embeddings are checked against, and the benchmark baseline."""

    def __init__(self, repo: Path, encoder: str, serving: ServingSpec = ServingSpec()):
        from .pipelines import CpuPreprocessor
        from .runtime import ort_session

        names = ModelNames(encoder)
        self.preprocess = CpuPreprocessor(Path(repo) / names.preprocess / "1" / "model.dali",
                                          serving.max_batch_size, serving.dali_threads)
        self.session = ort_session(Path(repo) / names.onnx / "1" / "model.onnx", serving.ort_threads)

    def __call__(self, encoded: list[np.ndarray]) -> np.ndarray:
        """Encoded images (uint8 byte arrays) -> embeddings [B, D], through the gate as served."""
        from .uploads import admit

        checked = [np.frombuffer(admit(np.asarray(e).tobytes()).data, np.uint8) for e in encoded]
        return self.session.run(None, {PIXELS: self.preprocess.run(checked)})[0]


# -- config pieces --------------------------------------------------------------------------

def tensor(name: str, dtype: int, dims, ragged: bool = False, is_input: bool = True):
    cls = mc.ModelInput if is_input else mc.ModelOutput
    t = cls(name=name, data_type=dtype, dims=list(dims))
    if ragged:
        t.allow_ragged_batch = True
    return t


def string_parameters(config: mc.ModelConfig, **values) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def dynamic_batching(serving: ServingSpec, preferred: bool) -> mc.ModelDynamicBatching:
    batching = mc.ModelDynamicBatching(max_queue_delay_microseconds=serving.queue_delay_us)
    if preferred:
        batching.preferred_batch_size.extend(serving.preferred_batch_sizes)
    return batching


def instances(flavour: Flavour, count: int = 1) -> list:
    kind = mc.ModelInstanceGroup.KIND_GPU if flavour == "native" else mc.ModelInstanceGroup.KIND_CPU
    return [mc.ModelInstanceGroup(count=count, kind=kind)]


def python_model(config: mc.ModelConfig, source: str, version_dir: Path) -> None:
    config.backend = "python"
    shutil.copy2(PYTHON_MODELS / source, version_dir / "model.py")


def dali_config(name: str, inputs: list, outputs: list, flavour: Flavour, serving: ServingSpec) -> mc.ModelConfig:
    """A DALI pipeline model: Triton's dali backend (native) or the python model that runs the
    same serialized pipeline on the CPU (portable)."""
    config = mc.ModelConfig(name=name, max_batch_size=serving.max_batch_size, input=inputs, output=outputs,
                            dynamic_batching=dynamic_batching(serving, preferred=False),
                            instance_group=instances(flavour))
    if flavour == "native":
        config.backend = "dali"
        config.default_model_filename = "model.dali"
        string_parameters(config, num_threads=serving.dali_threads)
    else:
        string_parameters(config, pipeline="model.dali", num_threads=serving.dali_threads,
                          max_pixels=serving.max_pixels)
    return config


def gate_config(serving: ServingSpec) -> mc.ModelConfig:
    """image_gate: python in both flavours (Pillow reads headers and converts what DALI cannot)."""
    config = mc.ModelConfig(name=GATE, max_batch_size=serving.max_batch_size,
                            input=[tensor(IMAGE, mc.TYPE_UINT8, [-1], ragged=True)],
                            output=[tensor(IMAGE, mc.TYPE_UINT8, [-1], is_input=False)],
                            dynamic_batching=dynamic_batching(serving, preferred=False),
                            instance_group=instances("portable"))
    string_parameters(config, max_request_bytes=serving.max_request_mb << 20, max_pixels=serving.max_pixels)
    return config


def write_gate(repo: Path, serving: ServingSpec) -> str:
    config = gate_config(serving)
    (repo / GATE / "1").mkdir(parents=True, exist_ok=True)
    python_model(config, "image_gate.py", repo / GATE / "1")
    write_config(repo / GATE, config)
    return GATE


def onnx_config(name: str, inputs: list, outputs: list, flavour: Flavour, serving: ServingSpec,
                tensorrt: bool = True, preferred: bool = True, spinning: bool = True) -> mc.ModelConfig:
    """An ONNX model: the onnxruntime backend, with the TensorRT accelerator in FP16 and an engine
    cache (native), or the python model running ONNX Runtime on the CPU (portable)."""
    config = mc.ModelConfig(name=name, max_batch_size=serving.max_batch_size, input=inputs, output=outputs,
                            dynamic_batching=dynamic_batching(serving, preferred=preferred),
                            instance_group=instances(flavour))
    if flavour == "portable":
        string_parameters(config, onnx_model="model.onnx", intra_op_threads=serving.ort_threads,
                          allow_spinning=int(spinning))
        return config
    config.backend = "onnxruntime"
    config.default_model_filename = "model.onnx"
    if tensorrt:
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters["precision_mode"] = "FP16"
        trt.parameters["max_workspace_size_bytes"] = str(2 << 30)
        trt.parameters["trt_engine_cache_enable"] = "true"
        trt.parameters["trt_engine_cache_path"] = serving.trt_cache_path
    return config


def preprocess_config(spec: EncoderSpec, names: ModelNames, flavour: Flavour,
                      serving: ServingSpec) -> mc.ModelConfig:
    return dali_config(names.preprocess, [tensor(IMAGE, mc.TYPE_UINT8, [-1], ragged=True)],
                       [tensor(PIXELS, mc.TYPE_FP32, spec.preprocess.output_shape, is_input=False)], flavour, serving)


def encoder_config(spec: EncoderSpec, names: ModelNames, flavour: Flavour,
                   serving: ServingSpec) -> mc.ModelConfig:
    return onnx_config(names.onnx, [tensor(PIXELS, mc.TYPE_FP32, spec.preprocess.output_shape)],
                       [tensor(EMBEDDING, mc.TYPE_FP32, [spec.dim], is_input=False)], flavour, serving)


def ensemble_config(name: str, max_batch_size: int, inputs: list, outputs: list,
                    steps: list[tuple[str, dict[str, str], dict[str, str]]]) -> mc.ModelConfig:
    """steps: (model, {model input: ensemble tensor}, {model output: ensemble tensor})."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size,
                            input=inputs, output=outputs)
    for model, input_map, output_map in steps:
        config.ensemble_scheduling.step.add(model_name=model, model_version=-1,
                                            input_map=input_map, output_map=output_map)
    return config


def embed_config(spec: EncoderSpec, names: ModelNames, serving: ServingSpec) -> mc.ModelConfig:
    return ensemble_config(
        names.embed, serving.max_batch_size,
        inputs=[tensor(IMAGE, mc.TYPE_UINT8, [-1])],
        outputs=[tensor(EMBEDDING, mc.TYPE_FP32, [spec.dim], is_input=False)],
        steps=[(GATE, {IMAGE: IMAGE}, {IMAGE: CHECKED}),
               (names.preprocess, {IMAGE: CHECKED}, {PIXELS: "pixels"}),
               (names.onnx, {PIXELS: "pixels"}, {EMBEDDING: EMBEDDING})],
    )


def write_config(model_dir: Path, config: mc.ModelConfig) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    write_atomically(path, text_format.MessageToString(config))  # a rescanning server never reads half a config
    return path


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt with Triton's schema; raises on any unknown field or bad value."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


# -- the whole repository -------------------------------------------------------------------

@dataclass
class BuildResult:
    encoder: str
    flavour: str
    repo: Path
    models: list[str]
    onnx_sha256: str
    export_max_abs_diff: float
    serving: dict = field(default_factory=dict)


def build_repo(encoder: str, repo: Path, flavour: Flavour = "portable", weights: Optional[Path] = None,
               random_weights: bool = False, serving: ServingSpec = ServingSpec(),
               export: Optional[ExportResult] = None, catalogs: tuple[str, ...] = ("fine", "general", "groups"),
               style_nets: Optional[dict[str, Path]] = None) -> BuildResult:
    """Write NAME_preprocess, NAME_encoder, NAME_embed and, per catalog, the server-side
    expansion (NAME_embed31, NAME_embed_general, NAME_embed_groups) into `repo`; other models are kept."""
    if flavour not in ("portable", "native"):
        raise ValueError(f"unknown flavour {flavour!r}; use 'portable' or 'native'")
    spec = get_encoder(encoder)
    names = ModelNames(encoder)
    repo = Path(repo)
    version = lambda model: repo / model / "1"  # noqa: E731

    pre_dir, enc_dir = version(names.preprocess), version(names.onnx)
    for d in (pre_dir, enc_dir, version(names.embed)):
        d.mkdir(parents=True, exist_ok=True)

    if export is None:
        export = export_encoder(spec, spec.build(weights, random_weights), enc_dir / "model.onnx")
    elif export.path != enc_dir / "model.onnx":
        shutil.copy2(export.path, enc_dir / "model.onnx")
    serialize_preprocess(spec.preprocess, pre_dir / "model.dali", device="gpu" if flavour == "native" else "cpu",
                         max_batch_size=serving.max_batch_size, num_threads=serving.dali_threads)

    pre, enc = preprocess_config(spec, names, flavour, serving), encoder_config(spec, names, flavour, serving)
    if flavour == "portable":
        python_model(pre, "dali_pipeline.py", pre_dir)
        python_model(enc, "onnx_encoder.py", enc_dir)
    write_config(repo / names.preprocess, pre)
    write_config(repo / names.onnx, enc)
    write_config(repo / names.embed, embed_config(spec, names, serving))
    models = [write_gate(repo, serving), names.preprocess, names.onnx, names.embed]
    from .expansion_repo import build_expansion  # the expansion builds on the models above

    for catalog in catalogs:
        models += build_expansion(spec, catalog, repo, flavour, serving, enc_dir / "model.onnx", style_nets)

    result = BuildResult(encoder=encoder, flavour=flavour, repo=repo, models=models,
                         onnx_sha256=export.sha256, export_max_abs_diff=export.max_abs_diff,
                         serving=asdict(serving))
    manifest = {**asdict(result), "repo": str(repo), "dim": spec.dim,
                "preprocess": asdict(spec.preprocess), "random_weights": random_weights}
    (repo / names.onnx / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return result

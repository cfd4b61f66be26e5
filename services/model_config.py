"""Generic pieces of Triton model configs, the bottom layer of rendering.

Configs are Triton's own ModelConfig protobuf messages, so they follow its schema by
construction. Each helper knows both flavours: `portable` runs DALI pipelines and ONNX models in
python-backend models on the CPU (this machine, CI), `native` uses Triton's dali and onnxruntime
backends (TensorRT) in NVIDIA's container. The family renderers (embed_models, expansion_models,
detector_models) build on these; nothing here knows a model family.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .contract import TensorSpec
from .files import write_atomically
from .serving_spec import ServingSpec  # noqa: F401  (where the renderers and callers take it from)

Flavour = Literal["portable", "native"]
FLAVOURS = ("portable", "native")
PYTHON_MODELS = Path(__file__).parent / "python_models"
TRITON_TYPES = {"UINT8": mc.TYPE_UINT8, "INT32": mc.TYPE_INT32, "INT64": mc.TYPE_INT64, "FP32": mc.TYPE_FP32,
                "BOOL": mc.TYPE_BOOL, "BYTES": mc.TYPE_STRING}


# -- config pieces --------------------------------------------------------------------------

def tensor(name: str, dtype: int, dims, ragged: bool = False, is_input: bool = True):
    cls = mc.ModelInput if is_input else mc.ModelOutput
    t = cls(name=name, data_type=dtype, dims=list(dims))
    if ragged:
        t.allow_ragged_batch = True
    return t


def tensor_of(spec: TensorSpec, is_input: bool = True, ragged: bool = False):
    """A contract tensor (services/contract.py) as a config input or output."""
    t = tensor(spec.name, TRITON_TYPES[spec.dtype], spec.dims, ragged=ragged, is_input=is_input)
    if is_input and spec.optional:
        t.optional = True
    return t


def string_parameters(config: mc.ModelConfig, **values) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def dynamic_batching(serving: ServingSpec, preferred: bool) -> mc.ModelDynamicBatching:
    batching = mc.ModelDynamicBatching(max_queue_delay_microseconds=serving.queue_delay_us)
    if preferred:  # Triton refuses a preferred size over max_batch_size
        batching.preferred_batch_size.extend(b for b in serving.preferred_batch_sizes if b <= serving.max_batch_size)
    return batching


def instances(flavour: Flavour, count: int = 1) -> list:
    kind = mc.ModelInstanceGroup.KIND_GPU if flavour == "native" else mc.ModelInstanceGroup.KIND_CPU
    return [mc.ModelInstanceGroup(count=count, kind=kind)]


@dataclass
class PlannedModel:
    """What one model of a repository gets, decided without writing anything: its config and, for
    the python backend, the python_models/ source copied into its version directory as model.py."""

    config: mc.ModelConfig
    python_source: Optional[str] = None

    @property
    def text(self) -> str:
        """config.pbtxt as write_config writes it."""
        return text_format.MessageToString(self.config)


def python_backend(config: mc.ModelConfig, source: str) -> PlannedModel:
    """The config served by the python backend from python_models/SOURCE (nothing is written)."""
    config.backend = "python"
    return PlannedModel(config, source)


def write_model(repo: Path, name: str, model: PlannedModel) -> None:
    """A planned model into REPO/NAME: model.py (python backend) into version 1, then config.pbtxt."""
    if model.python_source is not None:
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(PYTHON_MODELS / model.python_source, repo / name / "1" / "model.py")
    write_config(repo / name, model.config)


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


def onnx_config(name: str, inputs: list, outputs: list, flavour: Flavour, serving: ServingSpec,
                tensorrt: bool = True, preferred: bool = True) -> mc.ModelConfig:
    """An ONNX model: the onnxruntime backend, with the TensorRT accelerator in FP16 and an engine
    cache (native), or the python model running ONNX Runtime on the CPU (portable)."""
    config = mc.ModelConfig(name=name, max_batch_size=serving.max_batch_size, input=inputs, output=outputs,
                            dynamic_batching=dynamic_batching(serving, preferred=preferred),
                            instance_group=instances(flavour))
    if flavour == "portable":
        string_parameters(config, onnx_model="model.onnx", intra_op_threads=serving.ort_threads,
                          allow_spinning=int(serving.ort_spinning))
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


def ensemble_config(name: str, max_batch_size: int, inputs: list, outputs: list,
                    steps: list[tuple[str, dict[str, str], dict[str, str]]]) -> mc.ModelConfig:
    """steps: (model, {model input: ensemble tensor}, {model output: ensemble tensor})."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size,
                            input=inputs, output=outputs)
    for model, input_map, output_map in steps:
        config.ensemble_scheduling.step.add(model_name=model, model_version=-1,
                                            input_map=input_map, output_map=output_map)
    return config


def write_config(model_dir: Path, config: mc.ModelConfig) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    write_atomically(path, text_format.MessageToString(config))  # a rescanning server never reads half a config
    return path


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt with Triton's schema; raises on any unknown field or bad value."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())

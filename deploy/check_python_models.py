#!/usr/bin/env python3
"""Load every python-backend model of a Triton model repository in this interpreter, as the stub would.

Each `model.py` is imported with a stand-in for `triton_python_backend_utils` (Triton's stub
provides the real module at run time); with --configs, each model's `initialize()` runs too,
with the arguments Triton passes, and with --image, every model that takes just an encoded IMAGE
(other inputs optional) executes one request with that file: what a model imports only inside
initialize() or execute() is found that way. One JSON line per model; exit status 1 when any
fails, naming the module that is missing.

    python3 check_python_models.py REPO [--configs CONFIGS.json [--image FILE]]  # REPO/*/<version>/model.py
    python3 check_python_models.py FILE.py ...                                   # import only (the image build)

CONFIGS.json maps a model name to its config as Triton hands it to initialize() (the
ModelConfig message as JSON). Standard library only, besides what the models import:
deploy/Dockerfile.server runs it at build time, tests/test_server_image.py in a clean virtualenv.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import traceback
import types
from pathlib import Path


class Request:
    """A request of the stand-in: its input tensors by name."""

    def __init__(self, tensors=None):
        self.tensors = dict(tensors or {})

    def inputs(self):
        return list(self.tensors.values())

    def request_id(self):
        return "check_python_models"

    def correlation_id(self):
        return 0

    def parameters(self):
        return "{}"


def stand_in_pb_utils() -> types.ModuleType:
    """Enough of `triton_python_backend_utils` for importing and initializing a model."""
    pb = types.ModuleType("triton_python_backend_utils")

    class TritonError(Exception):
        UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

        def __init__(self, message="", code=0):
            super().__init__(message)
            self._message, self._code = message, code

        def message(self):
            return self._message

        def code(self):
            return self._code

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.output_tensors, self.error = list(output_tensors), error

    class Logger:
        @staticmethod
        def log(message, level=None):
            print(message, file=sys.stderr)

        log_info = log_warn = log_error = log_verbose = log

    def _by_name(items, name):
        return next((item for item in items if item["name"] == name), None)

    def triton_string_to_numpy(data_type):
        import numpy as np

        return {"TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16, "TYPE_UINT32": np.uint32,
                "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8, "TYPE_INT16": np.int16, "TYPE_INT32": np.int32,
                "TYPE_INT64": np.int64, "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
                "TYPE_STRING": np.object_, "TYPE_BYTES": np.object_}[data_type]

    pb.TritonError, pb.TritonModelException = TritonError, TritonError
    pb.Tensor, pb.InferenceResponse, pb.Logger = Tensor, InferenceResponse, Logger
    pb.InferenceRequest = Request
    pb.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    pb.get_output_tensor_by_name = lambda response, name: None
    pb.get_input_config_by_name = lambda config, name: _by_name(config.get("input", []), name)
    pb.get_output_config_by_name = lambda config, name: _by_name(config.get("output", []), name)
    pb.triton_string_to_numpy = triton_string_to_numpy
    pb.using_decoupled_model_transaction_policy = lambda config: False
    return pb


def model_files(paths: list[Path]) -> list[tuple[str, Path]]:
    """(model name, model.py) for a repository directory, or the files given."""
    found = []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.glob("*/*/model.py")):
                if file.parent.name.isdigit():
                    found.append((file.parent.parent.name, file))
        else:
            found.append((path.stem, path))
    return found


def triton_args(name: str, file: Path, config: dict) -> dict:
    """What Triton's python backend passes to initialize() (all values are strings)."""
    return {"model_config": json.dumps(config), "model_instance_kind": "CPU",
            "model_instance_name": f"{name}_0_0", "model_instance_device_id": "0",
            "model_repository": str(file.parent.parent), "model_version": file.parent.name, "model_name": name}


def takes_an_image(config: dict) -> bool:
    """Its one required input is an encoded IMAGE (bytes as UINT8)."""
    required = [i for i in config.get("input", []) if not i.get("optional")]
    return [(i["name"], i.get("data_type")) for i in required] == [("IMAGE", "TYPE_UINT8")]


def execute_one(model, image: bytes, pb: types.ModuleType) -> None:
    import numpy as np

    request = Request({"IMAGE": pb.Tensor("IMAGE", np.frombuffer(image, np.uint8)[None])})
    (response,) = model.execute([request])
    if response.error is not None:
        raise RuntimeError(f"the response to one valid image is an error: {response.error.message()}")
    if not response.output_tensors:
        raise RuntimeError("the response to one valid image has no outputs")


def check(name: str, file: Path, config: dict | None, image: bytes | None = None) -> dict:
    result = {"model": name, "file": str(file), "ok": False, "stage": "import", "missing": None, "error": None}
    sys.path.insert(0, str(file.parent))  # the stub imports model.py from its version directory
    try:
        spec = importlib.util.spec_from_file_location(f"_checked_model_{len(sys.modules)}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if config is not None:
            result["stage"] = "initialize"
            if not hasattr(module, "TritonPythonModel"):
                raise AttributeError(f"{file} defines no TritonPythonModel")
            model = module.TritonPythonModel()
            if hasattr(model, "initialize"):
                model.initialize(triton_args(name, file, config))
            if image is not None and takes_an_image(config):
                result["stage"] = "execute"
                execute_one(model, image, sys.modules["triton_python_backend_utils"])
            if hasattr(model, "finalize"):
                model.finalize()
        result["ok"] = True
    except ModuleNotFoundError as exc:
        result["missing"], result["error"] = exc.name, f"ModuleNotFoundError: {exc}"
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=-4)
        # A model that catches the import error answers with its message instead.
        missing = re.search(r"No module named '([\w.]+)'", str(exc))
        result["missing"] = missing.group(1) if missing else None
    finally:
        sys.path.remove(str(file.parent))
    return result


def third_party_modules() -> list[str]:
    stdlib = set(getattr(sys, "stdlib_module_names", ()))
    tops = {name.split(".")[0] for name in sys.modules}
    return sorted(t for t in tops if t not in stdlib and not t.startswith("_") and t not in sys.builtin_module_names
                  and t != "triton_python_backend_utils")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="a model repository, or model files")
    parser.add_argument("--configs", type=Path, help="JSON: model name -> config (then initialize() runs too)")
    parser.add_argument("--image", type=Path, help="with --configs: an encoded image that models taking an IMAGE "
                        "execute one request with")
    options = parser.parse_args(argv)
    if options.image and not options.configs:
        parser.error("--image needs --configs")
    image = options.image.read_bytes() if options.image else None
    configs = json.loads(options.configs.read_text()) if options.configs else None
    sys.modules["triton_python_backend_utils"] = stand_in_pb_utils()
    files = model_files(options.paths)
    if not files:
        print(json.dumps({"error": f"no python-backend model (*/<version>/model.py) under {options.paths}"}))
        return 1
    failed = 0
    for name, file in files:
        config = None
        if configs is not None:
            if name not in configs:
                print(json.dumps({"model": name, "ok": False, "error": f"no config for {name} in {options.configs}"}))
                failed += 1
                continue
            config = configs[name]
        result = check(name, file, config, image)
        result["executed"] = result["ok"] and image is not None and takes_an_image(config)
        failed += not result["ok"]
        print(json.dumps(result), flush=True)
    print(json.dumps({"summary": {"models": len(files), "failed": failed, "python": sys.version.split()[0],
                                  "third_party_modules": third_party_modules()}}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

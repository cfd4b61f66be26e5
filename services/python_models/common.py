"""What every portable python-backend model needs: its parameters and error responses."""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils


def model_parameters(args: dict) -> tuple[dict, dict[str, str], Path]:
    """(model config, string parameters, version directory) from Triton's initialize() args."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    version_dir = Path(args["model_repository"]) / args["model_version"]
    return config, params, version_dir


def invalid_argument(message: str) -> "pb_utils.InferenceResponse":
    # INVALID_ARG reaches the gRPC client as StatusCode.INVALID_ARGUMENT for this request only.
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def internal_error(message: str) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))

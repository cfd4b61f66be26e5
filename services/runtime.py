"""Light helpers shared by the python-backend models and in-process reference runs.

Kept free of torch so that the python-backend stubs stay small (~80 MB each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def ort_session(path: Path, threads: Optional[int] = None, spinning: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Idle ONNX Runtime threads spin by default; beside DALI on the same cores (served, or in turn
    # in-process) the spinning burns the CPU DALI needs (services/model_config.py ServingSpec).
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

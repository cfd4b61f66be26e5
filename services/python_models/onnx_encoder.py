"""Portable ONNX model (encoders, K-version encoders, style networks, probes) on ONNX Runtime (CPU).

The dynamic batcher's requests are concatenated, input by input, into one ONNX Runtime call,
and every output is split again (a probe has three).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from equiprobe.services.python_models.common import model_parameters
from equiprobe.services.runtime import OnnxRunner


class TritonPythonModel:
    def initialize(self, args):
        config, params, version_dir = model_parameters(args)
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.runner = OnnxRunner(version_dir / params["onnx_model"], int(params["intra_op_threads"]),
                                 micro_batch=int(params.get("micro_batch", "0")),  # 0: the whole batch in one run
                                 parallel_runs=int(params.get("parallel_runs", "1")),  # micro-batches at once
                                 spinning=params.get("allow_spinning", "0") == "1")

    def execute(self, requests):
        feeds = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                 for name in self.input_names}
        outputs = self.runner({n: np.concatenate(a) for n, a in feeds.items()}, self.output_names)
        splits = np.cumsum([len(a) for a in feeds[self.input_names[0]]])[:-1]
        per_request = zip(*[np.split(output, splits) for output in outputs])
        return [pb_utils.InferenceResponse([pb_utils.Tensor(n, chunk) for n, chunk in zip(self.output_names, chunks)])
                for chunks in per_request]

"""Portable `NAME_encoder`: the exported ONNX model on ONNX Runtime (CPU).

The dynamic batcher's requests are concatenated into one ONNX Runtime call and split again.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from services.python_models.common import model_parameters
from services.runtime import ort_session


class TritonPythonModel:
    def initialize(self, args):
        config, params, version_dir = model_parameters(args)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.session = ort_session(version_dir / params["onnx_model"], int(params["intra_op_threads"]))

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        outputs = self.session.run([self.output_name], {self.input_name: np.concatenate(arrays)})[0]
        splits = np.cumsum([len(a) for a in arrays])[:-1]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, chunk)])
                for chunk in np.split(outputs, splits)]

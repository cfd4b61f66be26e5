"""Portable `NAME_preprocess`: the serialized DALI pipeline run on the CPU.

All requests that the dynamic batcher hands over are decoded in one DALI run. A bad image
would fail the whole run, so on failure each request is retried alone and only the bad ones
get an INVALID_ARGUMENT error: other requests in the same batch still succeed.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from services.pipelines import CpuPreprocessor
from services.python_models.common import invalid_argument, model_parameters
from services.runtime import ImageRejected, check_encoded_image, decode_error_message


class TritonPythonModel:
    def initialize(self, args):
        config, params, version_dir = model_parameters(args)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.preprocessor = CpuPreprocessor(version_dir / params["pipeline"], config["max_batch_size"],
                                            int(params["num_threads"]))

    def _respond(self, pixels: np.ndarray):
        return pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, pixels)])

    def execute(self, requests):
        responses = [None] * len(requests)
        accepted = {}  # request index -> list of encoded images (one per batch row)
        for i, request in enumerate(requests):
            rows = list(pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy())
            try:
                for row in rows:
                    check_encoded_image(row)
                accepted[i] = rows
            except ImageRejected as exc:
                responses[i] = invalid_argument(str(exc))
            except Exception as exc:  # never let one request's surprise fail the whole batch
                responses[i] = invalid_argument(f"IMAGE could not be read: {type(exc).__name__}: {exc}")
        if accepted:
            images = [row for rows in accepted.values() for row in rows]
            try:
                pixels = self.preprocessor.run(images)
                start = 0
                for i, rows in accepted.items():
                    responses[i] = self._respond(pixels[start:start + len(rows)])
                    start += len(rows)
            except Exception:
                for i, rows in accepted.items():  # isolate the request(s) that broke the batch
                    try:
                        responses[i] = self._respond(self.preprocessor.run(rows))
                    except Exception as exc:
                        responses[i] = invalid_argument(decode_error_message(exc))
        return responses

"""Portable DALI model: a serialized pipeline run on the CPU, fed by the config's inputs.

All requests that the dynamic batcher hands over go through one DALI run. A bad image would
fail the whole run, so on failure each request is retried alone and only the bad ones get an
INVALID_ARGUMENT error: other requests in the same batch still succeed.
"""

import triton_python_backend_utils as pb_utils

from services.pipelines import INPUT_NAME, SerializedPipeline
from services.python_models.common import invalid_argument, model_parameters
from services.runtime import ImageRejected, check_encoded_image, decode_error_message


class TritonPythonModel:
    def initialize(self, args):
        config, params, version_dir = model_parameters(args)
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.pipeline = SerializedPipeline(version_dir / params["pipeline"], config["max_batch_size"],
                                           int(params["num_threads"]))

    def _read(self, request) -> dict:
        feeds = {name: list(pb_utils.get_input_tensor_by_name(request, name).as_numpy()) for name in self.inputs}
        for row in feeds.get(INPUT_NAME, []):
            check_encoded_image(row)
        return feeds

    def _respond(self, outputs):
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in zip(self.outputs, outputs)])

    def execute(self, requests):
        responses = [None] * len(requests)
        accepted = {}  # request index -> its feeds
        for i, request in enumerate(requests):
            try:
                accepted[i] = self._read(request)
            except ImageRejected as exc:
                responses[i] = invalid_argument(str(exc))
            except Exception as exc:  # never let one request's surprise fail the whole batch
                responses[i] = invalid_argument(f"{INPUT_NAME} could not be read: {type(exc).__name__}: {exc}")
        if not accepted:
            return responses
        merged = {name: [row for feeds in accepted.values() for row in feeds[name]] for name in self.inputs}
        try:
            outputs = self.pipeline.run(merged)
            start = 0
            for i, feeds in accepted.items():
                rows = len(feeds[self.inputs[0]])
                responses[i] = self._respond([o[start:start + rows] for o in outputs])
                start += rows
        except Exception:
            for i, feeds in accepted.items():  # isolate the request(s) that broke the batch
                try:
                    responses[i] = self._respond(self.pipeline.run(feeds))
                except Exception as exc:
                    responses[i] = invalid_argument(decode_error_message(exc))
        return responses

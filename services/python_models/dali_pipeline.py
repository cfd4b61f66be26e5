"""Portable DALI model: a serialized pipeline run on the CPU, fed by the config's inputs.

All requests that the dynamic batcher hands over go through one DALI run, with the decoders'
messages caught (services/decode_log.py). If the run fails, or a decoder complained, each
request is run again alone: only the requests whose image failed or was only partly decoded get
an INVALID_ARGUMENT error (strict decoding) and a structured log line naming the request; the
others in the batch still succeed.
"""

import hashlib
import json

import triton_python_backend_utils as pb_utils

from equiprobe.services.decode_log import DecoderMessages, decode_error_message, partial_decode_message
from equiprobe.services.contract import IMAGE
from equiprobe.services.pipelines import SerializedPipeline
from equiprobe.services.python_models.common import invalid_argument, model_parameters
from equiprobe.services.uploads import ImageRejected, Limits, read_header


class TritonPythonModel:
    def initialize(self, args):
        config, params, version_dir = model_parameters(args)
        self.model = args["model_name"]
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.pipeline = SerializedPipeline(version_dir / params["pipeline"], config["max_batch_size"],
                                           int(params["num_threads"]))
        # The pixel cap (build-repo --max-pixels), also here for callers that skip image_gate. No
        # size cap: the gate caps the upload, and its PPM of a large HEIC may be bigger than that.
        self.limits = Limits(max_request_bytes=1 << 62, max_pixels=int(params.get("max_pixels", Limits().max_pixels)))
        self.messages = DecoderMessages()
        self.logger = pb_utils.Logger

    def _read(self, request) -> dict:
        feeds = {name: list(pb_utils.get_input_tensor_by_name(request, name).as_numpy()) for name in self.inputs}
        for row in feeds.get(IMAGE, []):
            read_header(row.tobytes(), self.limits)
        return feeds

    def _respond(self, outputs):
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in zip(self.outputs, outputs)])

    def _run(self, feeds):
        """(outputs or the exception, decoder messages) of one DALI run."""
        with self.messages:
            try:
                outputs = self.pipeline.run(feeds)
            except Exception as exc:
                outputs = exc
        return outputs, self.messages.lines

    def _log(self, request, feeds, event: str, messages: list[str]) -> None:
        images = [row.tobytes() for row in feeds.get(IMAGE, [])]
        self.logger.log_warn(json.dumps({
            "event": event, "model": self.model, "request_id": request.request_id(),
            "image_bytes": [len(b) for b in images],
            "image_sha256": [hashlib.sha256(b).hexdigest()[:16] for b in images], "decoder": messages}))

    def execute(self, requests):
        responses = [None] * len(requests)
        accepted = {}  # request index -> its feeds
        for i, request in enumerate(requests):
            try:
                accepted[i] = self._read(request)
            except ImageRejected as exc:
                responses[i] = invalid_argument(str(exc))
            except Exception as exc:  # never let one request's surprise fail the whole batch
                responses[i] = invalid_argument(f"{IMAGE} could not be read: {type(exc).__name__}: {exc}")
        if not accepted:
            return responses
        merged = {name: [row for feeds in accepted.values() for row in feeds[name]] for name in self.inputs}
        outputs, messages = self._run(merged)
        if not isinstance(outputs, Exception) and not messages:
            start = 0
            for i, feeds in accepted.items():
                rows = len(feeds[self.inputs[0]])
                responses[i] = self._respond([o[start:start + rows] for o in outputs])
                start += rows
            return responses
        for i, feeds in accepted.items():  # find the request(s) that failed or made the decoder complain
            outputs, messages = self._run(feeds)
            if isinstance(outputs, Exception):
                self._log(requests[i], feeds, "decode_failed", messages)
                responses[i] = invalid_argument(decode_error_message(outputs, messages))
            elif messages:
                self._log(requests[i], feeds, "partly_decoded", messages)
                responses[i] = invalid_argument(partial_decode_message(messages))
            else:
                responses[i] = self._respond(outputs)
        return responses

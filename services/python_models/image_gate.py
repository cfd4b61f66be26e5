"""`image_gate`: the first step of every model that takes an upload (both flavours).

Each IMAGE row goes through services.uploads.admit: limits, format, structural checks, and the
conversion of formats DALI cannot decode. Rejected requests get INVALID_ARGUMENT and one
structured log line; the others get the bytes DALI should decode.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from equiprobe.services.contract import IMAGE
from equiprobe.services.python_models.common import internal_error, invalid_argument, model_parameters
from equiprobe.services.uploads import ImageRejected, Limits, admit



class TritonPythonModel:
    def initialize(self, args):
        _, params, _ = model_parameters(args)
        self.model = args["model_name"]
        self.limits = Limits(max_request_bytes=int(params["max_request_bytes"]), max_pixels=int(params["max_pixels"]))

    def _one(self, request):
        rows = [admit(row.tobytes(), self.limits).data for row in pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy()]
        if len({len(r) for r in rows}) > 1:
            raise ImageRejected(f"send one image per request ({len(rows)} rows of different formats were sent)")
        out = np.stack([np.frombuffer(r, np.uint8) for r in rows])
        return pb_utils.InferenceResponse([pb_utils.Tensor(IMAGE, out)])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except ImageRejected as exc:
                pb_utils.Logger.log_info(json.dumps({"event": "image_rejected", "model": self.model,
                                                     "request_id": request.request_id(), "reason": str(exc)}))
                responses.append(invalid_argument(str(exc)))
            except Exception as exc:  # our fault, not the image's
                responses.append(internal_error(f"{self.model} failed: {type(exc).__name__}: {exc}"))
        return responses

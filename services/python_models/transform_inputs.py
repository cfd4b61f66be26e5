"""`CATALOG_inputs`: everything the expansion needs that is not pixels, per image.

From the image bytes and the optional SEED: the image key (a hash of the bytes), every
transformation's drawn parameters (PARAMS) and the host-rendered inputs (blur kernels, glyphs,
style references). Parameters are a pure function of (key, transformation id, seed).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from services.python_models.common import internal_error, invalid_argument, model_parameters
from services.runtime import ImageRejected, check_encoded_image
from services.transforms import get_catalog, image_key


class TritonPythonModel:
    def initialize(self, args):
        config, params, _ = model_parameters(args)
        self.catalog = get_catalog(params["catalog"])
        if self.catalog.version != params["catalog_version"]:
            raise ValueError(f"repository was built for catalog {params['catalog_version']}, "
                             f"this code has {self.catalog.version}; rebuild the repository")
        self.outputs = [o["name"] for o in config["output"]]

    def _one(self, request):
        images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
        if len(images) != 1:
            return invalid_argument(f"send one image per request to the expansion ({len(images)} were sent)")
        seed_tensor = pb_utils.get_input_tensor_by_name(request, "SEED")
        seed = int(seed_tensor.as_numpy().reshape(-1)[0]) if seed_tensor is not None else 0
        check_encoded_image(images[0])
        key = image_key(images[0].tobytes())
        values = self.catalog.host_inputs(key, seed)
        values["KEY"] = np.array([key.encode()], dtype=object)
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, values[n][None]) for n in self.outputs])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except ImageRejected as exc:
                responses.append(invalid_argument(str(exc)))
            except Exception as exc:  # our fault, not the image's: clients must not log it as a bad image
                responses.append(internal_error(f"{self.catalog.name} transform inputs failed: "
                                                f"{type(exc).__name__}: {exc}"))
        return responses

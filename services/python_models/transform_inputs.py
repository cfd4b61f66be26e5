"""`CATALOG_inputs`: everything the expansion needs that is not pixels, per image.

From the image bytes (already admitted by image_gate) and the optional SEED: the image key (a hash of the bytes), every
transformation's drawn parameters (PARAMS) and the host-rendered inputs (blur kernels, glyphs,
style references). Parameters are a pure function of (key, transformation id, seed).
The optional ROWS (which rows the encoder computes, for a refresh) is checked here and passed on,
all rows when absent.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from equiprobe.services.contract import IMAGE, KEY, ROWS, SEED, UPLOADS
from equiprobe.services.python_models.common import internal_error, invalid_argument, model_parameters
from equiprobe.services.transforms import assets, get_catalog, image_key


class RowsRejected(ValueError):
    """ROWS that name no row, or a row twice."""


def _optional(request, name: str, default):
    """The first value of an optional [1] input, or `default` when the request leaves it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor.as_numpy().reshape(-1)[0] if tensor is not None else default


class TritonPythonModel:
    def initialize(self, args):
        config, params, version_dir = model_parameters(args)
        if (version_dir / "assets").is_dir():  # written by build-repo (services/transforms/assets.py)
            assets.use_bundle(version_dir / "assets")
        self.catalog = get_catalog(params["catalog"])
        if self.catalog.version != params["catalog_version"]:
            raise ValueError(f"repository was built for catalog {params['catalog_version']}, "
                             f"this code has {self.catalog.version}; rebuild the repository")
        self.outputs = [o["name"] for o in config["output"]]
        self.rows = int(params.get("rows", len(self.catalog.transforms)))

    def _rows(self, request) -> np.ndarray:
        tensor = pb_utils.get_input_tensor_by_name(request, ROWS)
        if tensor is None:
            return np.arange(self.rows, dtype=np.int32)
        rows = tensor.as_numpy().reshape(-1)
        if rows.size == 0:
            raise RowsRejected("ROWS is empty: ask for at least one row, or leave ROWS out for all")
        if rows.min() < 0 or rows.max() >= self.rows:
            raise RowsRejected(f"ROWS must be row indices in 0..{self.rows - 1}; got {rows.min()}..{rows.max()}")
        if len(np.unique(rows)) != rows.size:
            raise RowsRejected("ROWS has repeated rows; ask for each row once")
        return rows.astype(np.int32)

    def _one(self, request):
        images = pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy()
        if len(images) != 1:
            return invalid_argument(f"send one image per request to the expansion ({len(images)} were sent)")
        seed, uploads = int(_optional(request, SEED, 0)), bool(_optional(request, UPLOADS, False))
        rows = self._rows(request)
        key = image_key(images[0].tobytes())
        values = self.catalog.host_inputs(key, seed, uploads)
        values[KEY] = np.array([key.encode()], dtype=object)
        values[ROWS] = rows
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, values[n][None]) for n in self.outputs])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except RowsRejected as exc:
                responses.append(invalid_argument(str(exc)))
            except Exception as exc:  # our fault, not the image's: clients must not log it as a bad image
                responses.append(internal_error(f"{self.catalog.name} transform inputs failed: "
                                                f"{type(exc).__name__}: {exc}"))
        return responses

"""`NAME_versions`: an expansion's crops through the one NAME_encoder (both flavours).

VERSIONS [B, K, S, S, 3] (and EXTRA [B, N, S, S, 3], style networks' crops, after them) and ROWS
[B, R] in; EMBEDDINGS [B, R, D] out (and FEATURES [B, R, F] where NAME_encoder taps early blocks):
each image's rows ROWS picks, in that order. The picked
crops of every request in the batch are sent to NAME_encoder (BLS) in chunks of at most its
max_batch_size, all in flight at once, so its dynamic batcher sees them together with the
NAME_embed requests; the encoder's weights are loaded once, by NAME_encoder alone.
"""

import asyncio
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from equiprobe.services.contract import EMBEDDING, EMBEDDINGS, EXTRA, FEATURES, PIXELS, ROWS, VERSIONS
from equiprobe.services.python_models.common import internal_error, invalid_argument, model_parameters

LOAD_WAIT_S = 30.0  # how long a request waits for NAME_encoder to finish loading


class TritonPythonModel:
    def initialize(self, args):
        _, params, _ = model_parameters(args)
        self.model = args["model_name"]
        self.encoder = params["encoder_model"]
        self.chunk = int(params["encoder_max_batch_size"])
        self.dim = int(params["dim"])
        self.features = int(params.get("features", "0"))  # FEATURES' width; 0: the encoder has none
        self.outputs = [EMBEDDING, FEATURES] if self.features else [EMBEDDING]

    def _picked(self, request) -> np.ndarray:
        """[B * R, S, S, 3]: each image's rows, in ROWS' order (a copy of only what is encoded)."""
        versions = pb_utils.get_input_tensor_by_name(request, VERSIONS).as_numpy()
        extra = pb_utils.get_input_tensor_by_name(request, EXTRA)
        rows = pb_utils.get_input_tensor_by_name(request, ROWS).as_numpy().reshape(len(versions), -1)
        k = versions.shape[1] + (extra.as_numpy().shape[1] if extra is not None else 0)
        if rows.size and (rows.min() < 0 or rows.max() >= k):
            raise IndexError(f"ROWS must be in 0..{k - 1}; got {rows.min()}..{rows.max()}")
        if extra is None:
            return np.concatenate([v[r] for v, r in zip(versions, rows)])
        extras = extra.as_numpy()
        return np.concatenate([np.concatenate([v, e])[r] for v, e, r in zip(versions, extras, rows)])

    async def _encode(self, crops: np.ndarray) -> list[np.ndarray]:
        """NAME_encoder's outputs for the crops: [EMBEDDING [n, D]] or [EMBEDDING, FEATURES [n, F]]."""
        if not len(crops):
            return [np.zeros((0, d), np.float32) for d in (self.dim, self.features)[:len(self.outputs)]]
        chunks = [crops[i:i + self.chunk] for i in range(0, len(crops), self.chunk)]
        calls = [pb_utils.InferenceRequest(model_name=self.encoder, inputs=[pb_utils.Tensor(PIXELS, chunk)],
                                           requested_output_names=self.outputs).async_exec() for chunk in chunks]
        outputs = []
        for chunk, response in zip(chunks, await asyncio.gather(*calls)):
            response = await self._until_loaded(chunk, response)
            if response.has_error():
                message = response.error().message()
                if "is not ready" in message:  # waited LOAD_WAIT_S: missing from the repository, or failed to load
                    message += f" ({self.model} waited {LOAD_WAIT_S:g} s for it; is it in the model repository?)"
                raise RuntimeError(f"{self.encoder}: {message}")
            outputs.append([pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in self.outputs])
        return [np.concatenate(parts) for parts in zip(*outputs)]

    async def _until_loaded(self, chunk: np.ndarray, response):
        """Triton does not know that this model calls NAME_encoder (BLS), so after a (re)start the
        expansions can be ready while NAME_encoder still loads: wait for it, within a bound."""
        deadline = time.monotonic() + LOAD_WAIT_S
        while response.has_error() and "is not ready" in response.error().message() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            response = await pb_utils.InferenceRequest(model_name=self.encoder, inputs=[pb_utils.Tensor(PIXELS, chunk)],
                                                       requested_output_names=self.outputs).async_exec()
        return response

    async def execute(self, requests):
        responses, picked = [None] * len(requests), {}
        for i, request in enumerate(requests):
            try:
                picked[i] = self._picked(request)
            except IndexError as exc:  # the inputs model checks ROWS first; this is the last guard
                responses[i] = invalid_argument(f"{self.model}: {exc}")
        if picked:
            order = sorted(picked)
            try:
                encoded = await self._encode(np.concatenate([picked[i] for i in order]))
            except Exception as exc:
                for i in order:
                    responses[i] = internal_error(f"{self.model} failed: {type(exc).__name__}: {exc}")
                return responses
            splits = np.cumsum([len(picked[i]) for i in order])[:-1]
            names = [EMBEDDINGS, FEATURES][:len(encoded)]
            for i, parts in zip(order, zip(*[np.split(output, splits) for output in encoded])):
                images = len(pb_utils.get_input_tensor_by_name(requests[i], VERSIONS).as_numpy())
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, part.reshape(images, -1, part.shape[-1])) for n, part in zip(names, parts)])
        return responses

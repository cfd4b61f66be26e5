"""A small synchronous gRPC client for `NAME_embed`: image file bytes in, embedding out."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

IMAGE, EMBEDDING = "IMAGE", "EMBEDDING"


class ServiceError(RuntimeError):
    """The server is unreachable, the model is missing, or a request was refused."""


def as_image_input(data: Union[bytes, np.ndarray]) -> grpcclient.InferInput:
    array = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    tensor = grpcclient.InferInput(IMAGE, [1, array.size], "UINT8")
    tensor.set_data_from_numpy(array.reshape(1, -1))
    return tensor


def check_model(client: grpcclient.InferenceServerClient, url: str, model: str) -> None:
    """Raise a ServiceError that says what is missing: the server, or the model."""
    try:
        live = client.is_server_live(client_timeout=5)
    except InferenceServerException as exc:
        raise ServiceError(f"no Triton server answers at {url}: {exc.message()}") from None
    if not live:
        raise ServiceError(f"the Triton server at {url} is not live")
    if not client.is_model_ready(model, client_timeout=5):
        raise ServiceError(f"model '{model}' is not loaded on the server at {url}")


class EmbeddingClient:
    def __init__(self, url: str, encoder: str, timeout_s: float = 60.0):
        self.url = url
        self.model = f"{encoder}_embed"
        self.timeout_s = timeout_s
        self.client = grpcclient.InferenceServerClient(url)

    def check(self) -> None:
        check_model(self.client, self.url, self.model)

    def embed(self, data: Union[bytes, np.ndarray]) -> np.ndarray:
        """Embed one encoded image (JPEG/PNG/BMP file bytes); returns a float32 [D] vector."""
        try:
            result = self.client.infer(self.model, [as_image_input(data)], client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise ServiceError(f"{self.model}: {exc.message()}") from None
        return result.as_numpy(EMBEDDING)[0]

    def embed_files(self, paths: list[Path]) -> np.ndarray:
        return np.stack([self.embed(Path(p).read_bytes()) for p in paths])

    def close(self) -> None:
        self.client.close()

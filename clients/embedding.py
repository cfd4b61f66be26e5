"""A small synchronous gRPC client for `NAME_embed`: image file bytes in, embedding out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from equiprobe.services.contract import EMBEDDING, FEATURES, IMAGE, ModelNames  # noqa: E402

from .connection import ServiceError, as_connection, explain  # noqa: F401  (ServiceError: raised to callers)


def as_image_input(data: Union[bytes, np.ndarray]) -> grpcclient.InferInput:
    array = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    tensor = grpcclient.InferInput(IMAGE, [1, array.size], "UINT8")
    tensor.set_data_from_numpy(array.reshape(1, -1))
    return tensor


def check_model(client: grpcclient.InferenceServerClient, url: str, model: str,
                headers: Optional[dict] = None) -> None:
    """Raise a ServiceError that says what is missing: the server, the model, or a key."""

    try:
        live = client.is_server_live(headers=headers, client_timeout=5)
    except InferenceServerException as exc:
        raise ServiceError(explain(f"no Triton server answers at {url}: {exc.message()}", headers, url)) from None
    if not live:
        raise ServiceError(f"the Triton server at {url} is not live")
    try:
        ready = client.is_model_ready(model, headers=headers, client_timeout=5)
    except InferenceServerException as exc:
        raise ServiceError(explain(f"{model}: {exc.message()}", headers, url)) from None
    if not ready:
        raise ServiceError(f"model '{model}' is not loaded on the server at {url}")


class EmbeddingClient:
    """`url`: gRPC HOST:PORT, or a clients.connection.Connection (TLS, keys)."""

    def __init__(self, url, encoder: str, timeout_s: float = 60.0):
        self.connection = as_connection(url)
        self.url = self.connection.url
        self.headers = self.connection.grpc_headers() or None
        self.model = ModelNames(encoder).embed
        self.timeout_s = timeout_s
        self.client = self.connection.grpc_client()

    def check(self) -> None:
        check_model(self.client, self.url, self.model, self.headers)

    def embed(self, data: Union[bytes, np.ndarray]) -> np.ndarray:
        """Embed one encoded image (JPEG/PNG/BMP file bytes); returns a float32 [D] vector."""
        return self.outputs(data, [EMBEDDING])[0]

    def features(self, data: Union[bytes, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(EMBEDDING [D], FEATURES [F]) of one encoded image, for an encoder that taps early blocks."""
        embedding, features = self.outputs(data, [EMBEDDING, FEATURES])
        return embedding, features

    def outputs(self, data: Union[bytes, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """The named outputs of NAME_embed for one encoded image, each without the batch axis."""
        try:
            result = self.client.infer(self.model, [as_image_input(data)], client_timeout=self.timeout_s,
                                       outputs=[grpcclient.InferRequestedOutput(n) for n in names],
                                       headers=self.headers)
        except InferenceServerException as exc:
            raise ServiceError(f"{self.model}: {self.connection.explain(exc.message())}") from None
        return [result.as_numpy(n)[0] for n in names]

    def embed_files(self, paths: list[Path]) -> np.ndarray:
        return np.stack([self.embed(Path(p).read_bytes()) for p in paths])

    def close(self) -> None:
        self.client.close()

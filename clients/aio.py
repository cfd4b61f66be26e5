"""An asyncio gRPC client over `tritonclient.grpc.aio` for bulk jobs.

A bounded number of requests in flight, a deadline on every request, retries with exponential
backoff on UNAVAILABLE and DEADLINE_EXCEEDED only (a server restarting, a slow moment; every
other error is the request's own fault and is reported at once) for up to `retry_for_s` after a
request's first failure, optional TLS and auth headers.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Optional

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from .connection import ClientOptions, ServiceError, refusal  # noqa: F401  (ClientOptions: the asyncio client's API)

RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


class RequestError(ServiceError):
    """One request was refused (bad image, wrong input); `status` is the gRPC status."""

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status


class AsyncTritonClient:
    def __init__(self, options: ClientOptions):
        self.options = options
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self.attempts = 0  # requests sent, retries included (for tests and progress)
        self.retried = 0
        self.client = grpcaio.InferenceServerClient(
            options.url, ssl=options.ssl or bool(options.root_certificates),
            root_certificates=_path(options.root_certificates), private_key=_path(options.private_key),
            certificate_chain=_path(options.certificate_chain), channel_args=_channel_args(options))

    async def __aenter__(self) -> "AsyncTritonClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.close()

    def _refusal(self, exc: InferenceServerException):
        """A call refused for a missing or wrong key, as one clear line (else None)."""
        return refusal(exc.message(), self.options.headers, self.options.url)

    async def model_config(self, model: str) -> dict:
        """The model's config, or a ServiceError saying whether the server, the model or a key is missing."""
        headers = self.options.headers or None
        try:
            live = await self.client.is_server_live(headers=headers, client_timeout=10)
        except InferenceServerException as exc:
            raise ServiceError(self._refusal(exc) or
                               f"no Triton server answers at {self.options.url}: {exc.message()}") from None
        if not live:
            raise ServiceError(f"the Triton server at {self.options.url} is not live")
        try:
            if not await self.client.is_model_ready(model, headers=headers, client_timeout=10):
                raise ServiceError(f"model '{model}' is not loaded on the server at {self.options.url}")
            return (await self.client.get_model_config(model, headers=headers, as_json=True,
                                                       client_timeout=10))["config"]
        except InferenceServerException as exc:
            raise ServiceError(self._refusal(exc) or f"{model}: {exc.message()}") from None

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        tensors = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [InferRequestedOutput(name) for name in outputs]
        async with self._slots:
            first_failure = None  # when this request first failed with a retryable status
            for attempt in itertools.count():
                self.attempts += 1
                try:
                    result = await self.client.infer(model, tensors, outputs=requested,
                                                     client_timeout=self.options.timeout_s,
                                                     headers=self.options.headers or None)
                    return {name: result.as_numpy(name) for name in outputs}
                except InferenceServerException as exc:
                    status = str(exc.status())
                    refused = self._refusal(exc)  # UNAVAILABLE too, but no retry brings a key
                    if refused:
                        raise RequestError(f"{model}: {refused}", status) from None
                    if status not in RETRYABLE:
                        raise RequestError(f"{model}: {exc.message()}", status) from None
                    first_failure = first_failure or time.monotonic()
                    waited = time.monotonic() - first_failure
                    if waited >= self.options.retry_for_s or attempt == self.options.retries:
                        raise RequestError(f"{model}: {status.split('.')[-1]} after {attempt + 1} attempts in "
                                           f"{waited:.0f} s (retry limit: {self.options.retry_for_s:g} s"
                                           + (f", {self.options.retries} retries" if self.options.retries is not None
                                              else "") + f"): {exc.message()}", status) from None
                    self.retried += 1
                    backoff = self.options.backoff_s * 2 ** min(attempt, 30)
                    await asyncio.sleep(min(self.options.max_backoff_s, backoff, self.options.retry_for_s - waited))
        raise AssertionError("unreachable")


def _channel_args(options: ClientOptions) -> list[tuple[str, int]]:
    """tritonclient's own channel arguments, and reconnects at most `max_backoff_s` apart: gRPC's
    default backoff grows to 120 s, so a channel whose server was down for 15 s only tried again
    about 10 s after the server was back (measured)."""
    keepalive = grpcaio.KeepAliveOptions()
    reconnect_ms = int(max(options.max_backoff_s, 0.1) * 1000)
    return [("grpc.max_send_message_length", grpcaio.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcaio.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", min(1000, reconnect_ms)),
            ("grpc.min_reconnect_backoff_ms", min(1000, reconnect_ms)),
            ("grpc.max_reconnect_backoff_ms", reconnect_ms)]


def _path(p: Optional[Path]) -> Optional[str]:
    return str(p) if p else None

"""Content-safety scoring with `NAME_detector`: image bytes in, how it was manipulated out.

The detector answers with the probability that the image was edited (MANIPULATION_SCORE: P(edited
| upload) for an upload a priori as likely edited as not, calibrated on validation sources; 0.5
means as likely edited as original), its verdict at the deployed threshold (MANIPULATED), and the
probe's distributions over the fine-grained transformations and the 10 categories. Top-k names
come from Triton's classification extension (the label files the deploy writes next to the model
config), so the client holds no class list of its own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Union

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .connection import Connection, as_connection
from .embedding import ServiceError, as_image_input, check_model

from equiprobe.services.contract import (CATEGORY_PROBS as CATEGORIES, EMBEDDING, MANIPULATED, DetectorNames,  # noqa: E402
                                        MANIPULATION_SCORE as SCORE, TRANSFORM_PROBS as TRANSFORMS)


@dataclass
class Score:
    manipulation_score: float  # P(edited), equal prior (calibrated); the raw 1 - P(identity) before calibration
    manipulated: bool  # the served model's verdict: score >= threshold
    threshold: float  # the deployed operating threshold on that probability (chosen on validation sources)
    transformations: list[tuple[str, float]]  # top-k (name, probability), most likely first
    categories: list[tuple[str, float]]
    model_version: str = ""
    embedding: np.ndarray = field(default=None, repr=False)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("embedding")
        out["transformations"] = [{"name": n, "probability": p} for n, p in self.transformations]
        out["categories"] = [{"name": n, "probability": p} for n, p in self.categories]
        return out


def format_threshold(value: float) -> str:
    """A calibrated threshold (0.62) with three decimals; one near 0 or 1 (a raw 1 - P(identity)
    threshold, 0.999786) with the digits that tell it apart."""
    return f"{value:.3f}" if 0.001 <= value <= 0.999 else f"{value:.6g}"


def parse_classification(entries: np.ndarray) -> list[tuple[str, float]]:
    """Triton's classification strings "score:index:label" -> [(label, score)]."""
    parsed = []
    for entry in entries:
        text = entry.decode() if isinstance(entry, bytes) else str(entry)
        score, index, *label = text.split(":", 2)
        parsed.append((label[0] if label else index, float(score)))
    return parsed


class Scorer:
    """`Scorer(url, encoder).score(jpeg_bytes)`; one gRPC round trip per image. `url`: gRPC
    HOST:PORT, or a clients.connection.Connection (TLS, keys)."""

    def __init__(self, url: Union[str, Connection], encoder: str, top: int = 3, with_embedding: bool = False,
                 timeout_s: float = 60.0):
        self.connection = as_connection(url)
        self.url, self.model, self.top = self.connection.url, DetectorNames(encoder).detector, top
        self.headers = self.connection.grpc_headers() or None
        self.with_embedding, self.timeout_s = with_embedding, timeout_s
        self.client = self.connection.grpc_client()

    def check(self) -> None:
        check_model(self.client, self.url, self.model, self.headers)

    def _parameter(self, name: str, default: str) -> str:
        """One of the served detector's model config parameters (the config is read once)."""
        if not hasattr(self, "_parameters"):
            try:
                config = self.client.get_model_config(self.model, as_json=True, headers=self.headers)["config"]
            except InferenceServerException as exc:
                raise ServiceError(f"{self.model}: {self.connection.explain(exc.message())}") from None
            self._parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        return self._parameters.get(name, default)

    @property
    def threshold(self) -> float:
        """The operating threshold the served detector applies to MANIPULATION_SCORE, from its model config."""
        return float(self._parameter("threshold", "nan"))

    @property
    def calibration(self) -> dict:
        """What MANIPULATION_SCORE is: the served calibration's kind, score, prior and parameters
        (trainer/calibration.py); for a base rate pi of edited uploads, P(edited) = 1 / (1 + (1 - p)
        / p * (1 - pi) / pi) when its prior is 0.5. {"kind": "none", ...} before calibration."""
        return json.loads(self._parameter("calibration", '{"kind": "none", "score": "1 - P(identity)"}'))

    def score(self, data: Union[bytes, np.ndarray]) -> Score:
        outputs = [grpcclient.InferRequestedOutput(SCORE), grpcclient.InferRequestedOutput(MANIPULATED),
                   grpcclient.InferRequestedOutput(TRANSFORMS, class_count=self.top),
                   grpcclient.InferRequestedOutput(CATEGORIES, class_count=self.top)]
        if self.with_embedding:
            outputs.append(grpcclient.InferRequestedOutput(EMBEDDING))
        try:
            result = self.client.infer(self.model, [as_image_input(data)], outputs=outputs,
                                       client_timeout=self.timeout_s, headers=self.headers)
        except InferenceServerException as exc:
            raise ServiceError(f"{self.model}: {self.connection.explain(exc.message())}") from None
        return Score(float(result.as_numpy(SCORE).reshape(-1)[0]), bool(result.as_numpy(MANIPULATED).reshape(-1)[0]),
                     self.threshold,
                     parse_classification(result.as_numpy(TRANSFORMS).reshape(-1)),
                     parse_classification(result.as_numpy(CATEGORIES).reshape(-1)),
                     result.get_response().model_version,
                     result.as_numpy(EMBEDDING)[0] if self.with_embedding else None)

    def close(self) -> None:
        self.client.close()

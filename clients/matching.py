"""Matching uploads against the deployed index of known images with `NAME_matcher` (issue 24).

One gRPC round trip per image: the k nearest known images (keys and cosine similarities, best
first), whether the best is a copy (similarity >= the deployed copy threshold), and, where the
index was deployed with its reference-aware probe, whether the copy was edited, how (the most
likely transformation and its category) and the probe's score; without a probe, or for an upload
that is not a copy, `edited` is false, `transformation` and `category` None and `score` -1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from equiprobe.services.contract import (CATEGORY, COPY, EDIT_SCORE, EDITED, MATCH_KEYS, MATCH_OUTPUTS,
                                        MATCH_SIMILARITIES, TRANSFORMATION, MatchNames)

from .connection import Connection, as_connection
from .embedding import ServiceError, as_image_input, check_model


@dataclass
class Match:
    matches: list[tuple[str, float]]  # (key, cosine similarity), best first
    copy: bool
    edited: bool
    transformation: Optional[str]  # None: no probe, or not a copy
    category: Optional[str]
    score: float  # the probe's EDIT_SCORE; -1 without a probe or for a non-copy
    model_version: str = ""

    def as_dict(self) -> dict:
        out = asdict(self)
        out["matches"] = [{"key": k, "similarity": s} for k, s in self.matches]
        return out


def _text(value) -> Optional[str]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text or None


def parse_outputs(outputs: dict[str, np.ndarray], top: Optional[int] = None, model_version: str = "") -> Match:
    """One image's NAME_matcher (or NAME_match) outputs, without the batch axis, as a Match."""
    keys = [_text(k) for k in outputs[MATCH_KEYS].reshape(-1)]
    sims = outputs[MATCH_SIMILARITIES].reshape(-1).astype(float)
    matches = [(k, float(s)) for k, s in zip(keys, sims) if k is not None][:top]
    return Match(matches, bool(outputs[COPY].reshape(-1)[0]), bool(outputs[EDITED].reshape(-1)[0]),
                 _text(outputs[TRANSFORMATION].reshape(-1)[0]), _text(outputs[CATEGORY].reshape(-1)[0]),
                 float(outputs[EDIT_SCORE].reshape(-1)[0]), model_version)


class Matcher:
    """`Matcher(url, encoder).match(jpeg_bytes)`. `url`: gRPC HOST:PORT, or a
    clients.connection.Connection (TLS, keys); `top`: at most this many matches (the served k at most)."""

    def __init__(self, url: Union[str, Connection], encoder: str, top: Optional[int] = None, timeout_s: float = 60.0):
        self.connection = as_connection(url)
        self.url, self.model, self.top = self.connection.url, MatchNames(encoder).matcher, top
        self.headers = self.connection.grpc_headers() or None
        self.timeout_s = timeout_s
        self.client = self.connection.grpc_client()

    def check(self) -> None:
        check_model(self.client, self.url, self.model, self.headers)

    def match(self, data: Union[bytes, np.ndarray]) -> Match:
        try:
            result = self.client.infer(self.model, [as_image_input(data)],
                                       outputs=[grpcclient.InferRequestedOutput(n) for n in MATCH_OUTPUTS],
                                       client_timeout=self.timeout_s, headers=self.headers)
        except InferenceServerException as exc:
            raise ServiceError(f"{self.model}: {self.connection.explain(exc.message())}") from None
        return parse_outputs({n: result.as_numpy(n)[0] for n in MATCH_OUTPUTS}, self.top,
                             result.get_response().model_version)

    def close(self) -> None:
        self.client.close()

"""Frozen image encoders: the registry and the declared entries."""

from . import zoo  # noqa: F401  (registers the encoders)
from .registry import (EncoderError, EncoderSpec, Preprocess, create_encoder, get_encoder,
                       list_encoders)

__all__ = ["EncoderError", "EncoderSpec", "Preprocess", "create_encoder", "get_encoder", "list_encoders"]

"""Typed run configuration (pydantic): one tree, unknown keys rejected, validated before launch."""

from .loader import load_config
from .run import RunConfig

__all__ = ["RunConfig", "load_config"]

"""Pick the object-store back end from a URI."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

from ..errors import UserError
from .base import ObjectStore, StorageSettings


def open_store(uri: str, settings: StorageSettings | None = None) -> ObjectStore:
    """Open `file:///dir`, a plain directory path, or `s3://bucket/prefix`."""
    settings = settings or StorageSettings()
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        from .local import LocalStore

        directory = unquote(parsed.path) if parsed.scheme == "file" else uri
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise UserError(f"bad file URI {uri!r}: use file:///absolute/path")
        directory = os.path.abspath(directory)
        return LocalStore(f"file://{directory}", directory)
    if parsed.scheme in ("s3", "s3a"):
        from .s3 import S3Store

        return S3Store(f"s3://{parsed.netloc}{parsed.path}".rstrip("/"), settings)
    raise UserError(f"unsupported storage URI {uri!r}: use file:///path or s3://bucket/prefix")

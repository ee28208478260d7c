"""Stores: where the vault's opaque objects live. See :mod:`.base` for the contract.

May not import: the format, the vault or any layer above; of megafs only
:mod:`megafs.errors`.
"""

from __future__ import annotations

from ..errors import UsageError
from .base import Pointer, Store
from .local import LocalStore

__all__ = ["LocalStore", "Pointer", "Store", "open_store"]


def open_store(url: str, *, endpoint: str | None = None, create: bool = False) -> Store:
    """Make a Store for ``url``: ``/path``, ``file:///path`` or ``s3://bucket/prefix``.

    Does no I/O; call ``await store.check()`` to verify it is reachable.
    ``create`` lets a local store make its folder (for ``megafs init``).
    """
    if url.startswith("s3://"):
        from .s3 import S3Store

        return S3Store.from_url(url, endpoint=endpoint)
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path.startswith("/"):
            raise UsageError(f"file:// URL must hold an absolute path: {url}")
        return LocalStore(path, create=create)
    if "://" in url:
        raise UsageError(f"unsupported store URL (use a path, file:// or s3://): {url}")
    return LocalStore(url, create=create)

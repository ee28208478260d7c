"""A store in an S3 bucket (AWS, SeaweedFS, MinIO, Garage, ...).

One concern a module, the arrows pointing one way (``store`` uses
``request``, which uses ``bodies`` and ``scrub``; none uses what is above it):

- :mod:`.store`: :class:`S3Store`, the Store contract, the key layout
  (``<prefix>o/`` objects, ``<prefix>p/`` pointers) and pointer CAS by
  conditional PUT;
- :mod:`.request`: :class:`~.request.Requester`, which resolves endpoint,
  region and credentials through botocore, signs (SigV4), sends and retries
  requests (:func:`is_temp_failure` alone decides what is retried), and maps
  a final answer to the exception tree;
- :mod:`.bodies`: reading an answer's body no further than the call allows
  (the server is not trusted with this process's memory);
- :mod:`.scrub`: keeping credentials out of log lines and error messages.

Every module logs to the one logger ``megafs.stores.s3``.

May not import: the format, the vault or any layer above the stores; of megafs
only :mod:`megafs.errors` and :mod:`megafs.stores.base`.
"""

from __future__ import annotations

from .request import is_temp_failure
from .store import S3Store

__all__ = ["S3Store", "is_temp_failure"]

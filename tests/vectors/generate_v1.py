"""Write the frozen v1 vectors (``v1.json``) and the frozen vault (``vault-v1/``).

Run once, when the v1 format was fixed::

    python tests/vectors/generate_v1.py

It refuses to overwrite existing vectors: they are the record of what vaults
written by megafs v1 look like, and ``tests/unit/test_kat.py`` checks that every
later megafs still reads them. Never regenerate them to make a test pass. A
new format version gets new files (``v2.json``, ``vault-v2/``) next to these.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.unit.test_kat import FROZEN_TREE, V1_JSON, V1_VAULT, compute_vectors, write_frozen  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(write_frozen(V1_JSON, V1_VAULT, compute_vectors, FROZEN_TREE))

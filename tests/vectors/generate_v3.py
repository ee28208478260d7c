"""Write the frozen format 3 vectors (``v3.json``) and vault (``vault-v3/``).

Run once, when format 3 (key commitment, per-object and per-seal keys) was
fixed::

    python tests/vectors/generate_v3.py

Like ``generate_v1.py`` and ``generate_v2.py`` it refuses to overwrite
existing vectors: they are the record of what vaults written by megafs in
format 3 look like, and ``tests/unit/test_kat.py`` checks that every later megafs
still reads them. Never regenerate them to make a test pass; a format 4 gets
new files.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.unit.test_kat import FROZEN_TREE_V2, V3_JSON, V3_VAULT, compute_vectors_v3, write_frozen  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(write_frozen(V3_JSON, V3_VAULT, compute_vectors_v3, FROZEN_TREE_V2))

"""Write the frozen format 2 vectors (``v2.json``) and vault (``vault-v2/``).

Run once, when format 2 (packs of small chunks) was fixed::

    python tests/vectors/generate_v2.py

Like ``generate_v1.py`` it refuses to overwrite existing vectors: they are
the record of what vaults written by megafs in format 2 look like, and
``tests/unit/test_kat.py`` checks that every later megafs still reads them.
Never regenerate them to make a test pass; a format 3 gets new files.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.unit.test_kat import FROZEN_TREE_V2, V2_JSON, V2_VAULT, compute_vectors_v2, write_frozen  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(write_frozen(V2_JSON, V2_VAULT, compute_vectors_v2, FROZEN_TREE_V2))

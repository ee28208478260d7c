"""Write the frozen vectors of the share format, version 1
(``share-v1.json``; docs/sharing.md).

Run once, when the format was fixed::

    python tests/vectors/generate_share_v1.py

It refuses to overwrite: ``tests/unit/test_kat_shares.py`` checks that
every later megafs still opens them. Never regenerate them to make a test
pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.unit.test_kat_shares import write_frozen_share_v1  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(write_frozen_share_v1())

"""Write the frozen vectors of root record version 3 (``root-v3.json``) and
its frozen vault (``vault-root-v3/``).

Run once, when record version 3 (history: docs/history.md) was fixed::

    python tests/vectors/generate_root_v3.py

The vault is the record version 2 frozen vault (``vault-root-v2/``) written
on by a third device that added a file, pinned that state and rewrote the
file. Like the other generators it refuses to overwrite:
``tests/unit/test_kat_history.py`` checks that every later megafs still
reads them. Never regenerate them to make a test pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.unit.test_kat_history import write_frozen_root_v3  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(write_frozen_root_v3())

"""Write the frozen vectors of device log objects, version 1
(``devlog-v1.json``), and their frozen vault (``vault-devlog-v1/``).

Run once, when version 1 of the device log (docs/format.md §14) was fixed::

    python tests/vectors/generate_devlog_v1.py

The vault is the record version 3 frozen vault (``vault-root-v3/``) on
which a device fsynced twice (two log objects) and died before the commit
that would have folded them. Like the other generators it refuses to
overwrite: ``tests/unit/test_kat_devlog.py`` checks that every later megafs
still reads them. Never regenerate them to make a test pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.unit.test_kat_devlog import write_frozen_devlog_v1  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(write_frozen_devlog_v1())

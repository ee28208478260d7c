"""Write the frozen vectors of root record version 2 (``root-v2.json``) and
its frozen vault (``vault-root-v2/``).

Run once, when record version 2 (several devices: docs/multidevice.md) was
fixed::

    python tests/vectors/generate_root_v2.py

The vault is the format 3 frozen vault (``vault-v3/``) upgraded by one
device and then written by a second, each adding one file; the format
version in its header stays 3. Like the other generators it refuses to
overwrite: ``tests/unit/test_kat_devices.py`` checks that every later megafs
still reads them. Never regenerate them to make a test pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.unit.test_kat_devices import write_frozen_root_v2  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(write_frozen_root_v2())

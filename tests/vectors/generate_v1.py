"""Write the frozen v1 vectors (``v1.json``) and the frozen vault (``vault-v1/``).

Run once, when the v1 format was fixed::

    python tests/vectors/generate_v1.py

It refuses to overwrite existing vectors: they are the record of what vaults
written by megafs v1 look like, and ``tests/test_kat.py`` checks that every
later megafs still reads them. Never regenerate them to make a test pass. A
new format version gets new files (``v2.json``, ``vault-v2/``) next to these.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.test_kat import (  # noqa: E402
    FROZEN_PASSPHRASE,
    V1_JSON,
    V1_VAULT,
    build_vault,
    compute_vectors,
)

from megafs import header  # noqa: E402


def main() -> int:
    if V1_JSON.exists() or V1_VAULT.exists():
        print(f"refusing to overwrite {V1_JSON} / {V1_VAULT}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEGAFS_STATE_DIR"] = os.path.join(tmp, "state")
        vectors = compute_vectors(Path(tmp))
        V1_JSON.write_text(json.dumps(vectors, indent=1, sort_keys=True) + "\n")
        recovery = trio.run(build_vault, V1_VAULT, FROZEN_PASSPHRASE)
    print(f"wrote {V1_JSON} and {V1_VAULT}")
    print(f"recovery key of the frozen vault: {header.format_recovery_key(recovery)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write the frozen format 2 vectors (``v2.json``) and vault (``vault-v2/``).

Run once, when format 2 (packs of small chunks) was fixed::

    python tests/vectors/generate_v2.py

Like ``generate_v1.py`` it refuses to overwrite existing vectors: they are
the record of what vaults written by megafs in format 2 look like, and
``tests/test_kat.py`` checks that every later megafs still reads them.
Never regenerate them to make a test pass; a format 3 gets new files.
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
    FROZEN_TREE_V2,
    V2_JSON,
    V2_VAULT,
    build_vault,
    compute_vectors_v2,
)

from megafs import header  # noqa: E402


def main() -> int:
    if V2_JSON.exists() or V2_VAULT.exists():
        print(f"refusing to overwrite {V2_JSON} / {V2_VAULT}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEGAFS_STATE_DIR"] = os.path.join(tmp, "state")
        vectors = compute_vectors_v2(Path(tmp))
        V2_JSON.write_text(json.dumps(vectors, indent=1, sort_keys=True) + "\n")
        recovery = trio.run(build_vault, V2_VAULT, FROZEN_PASSPHRASE, FROZEN_TREE_V2)
    print(f"wrote {V2_JSON} and {V2_VAULT}")
    print(f"recovery key of the frozen vault: {header.format_recovery_key(recovery)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m megafs.cli``: the same as ``python -m megafs`` and the ``megafs`` script."""

import sys

from .app import main

sys.exit(main())

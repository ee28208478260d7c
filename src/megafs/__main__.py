"""``python -m megafs``: the same as the ``megafs`` console script."""

import sys

from .cli import main

sys.exit(main())

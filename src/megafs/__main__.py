"""``python -m megafs``: the same as the ``megafs`` console script.

May not touch: anything but :func:`megafs.cli.main`.
"""

import sys

from .cli import main

sys.exit(main())

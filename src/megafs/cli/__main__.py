"""``python -m megafs.cli``: the same as ``python -m megafs`` and the ``megafs`` script.

May not touch: anything but :func:`megafs.cli.app.main`.
"""

import sys

from .app import main

sys.exit(main())

"""megafs: an end-to-end encrypted cloud drive that mounts as an ordinary folder.

May not import any submodule, so that ``import megafs`` loads no layer.
"""

__version__ = "0.1.0"

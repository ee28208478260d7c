"""megafs: an end-to-end encrypted cloud drive that mounts as an ordinary folder."""

__version__ = "0.1.0"

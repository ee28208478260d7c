"""Pure format code, no I/O: the cryptographic primitives and key schedule
(:mod:`.crypto`) and the vault header with its key slots (:mod:`.header`).

May import only :mod:`megafs.errors`; everything above builds on it.
"""

"""Pure format code, no I/O: the cryptographic primitives and key schedule
(:mod:`.crypto`) and the vault header with its key slots (:mod:`.header`).

May not touch: any megafs module but :mod:`megafs.errors` (no store, vault or
client state), or any file or network I/O; everything above builds on it.
"""

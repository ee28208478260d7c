"""The vault's object I/O over a store: unlocking, the root compare-and-swap
and the writer lease (:mod:`.vault`), the one road for chunk and pack objects
(:mod:`.content`), and the radix index and pack table (:mod:`.tables`).

Nothing above this package touches a store for objects; this package knows
nothing of inodes, the journal or FUSE.
"""

"""The vault's object I/O over a store: the root pointer's record and the
device records (:mod:`.root`, pure), unlocking, the root compare-and-swap
and the writer lease (:mod:`.vault`), the one road for chunk and pack objects
(:mod:`.content`), and the radix index and pack table (:mod:`.tables`).

Nothing above this package touches a store for objects. May not import: the
filesystem model (inodes), the journal, the passphrase sources, fuse, mount or
cli; of :mod:`megafs.client` only the disk cache, which :mod:`.content` fills.
"""

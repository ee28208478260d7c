"""State on the user's machine: the write-ahead journal (:mod:`.journal`),
the disk cache of sealed blocks (:mod:`.cache`) and the passphrase sources
(:mod:`.passphrase`).

May not import: the stores, the vault, the filesystem model, fuse, mount or
cli; only :mod:`megafs.errors` and :mod:`megafs.format`. The journal yields
records, and the model replays them.
"""

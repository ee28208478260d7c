"""State on the user's machine: the write-ahead journal (:mod:`.journal`),
the disk cache of sealed blocks (:mod:`.cache`) and the passphrase sources
(:mod:`.passphrase`).

Knows nothing of the filesystem model: the journal yields records, and the
model replays them.
"""

"""The pyfuse3 adapter (:mod:`.operations`): the only code that imports
pyfuse3, and the boundary where errors become errnos.

May not import: the vault, the stores, the client state, the model's components,
mount or cli (only ``Filesystem`` and ``Attr`` of :mod:`megafs.fs`); this file
imports nothing, so pyfuse3 loads only with :mod:`.operations`.
"""

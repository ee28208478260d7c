"""The pyfuse3 adapter (:mod:`.operations`): the only code that imports
pyfuse3, and the boundary where errors become errnos.
"""

"""The filesystem model over a vault, with no FUSE: inodes, the POSIX
namespace, the data path, commits and garbage collection, each in an object
of its own that :class:`.filesystem.Filesystem` composes; and the checker
(:mod:`.fsck`).

May import the vault, the client state and the format. May not touch:
pyfuse3, fuse, mount or cli, or a store except through the vault (of
:mod:`megafs.stores` only fsck's ``Refused`` record).
"""

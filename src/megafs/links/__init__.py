"""Share links seen from the recipient's side (docs/sharing.md): the page a
browser opens (:mod:`.page`) and the command-line downloader (:mod:`.fetch`).

May not touch: the vault, the stores or the filesystem model: a recipient
has no vault, only the link. Builds on :mod:`megafs.format.share`.
"""

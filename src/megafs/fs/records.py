"""The inode record codec: an :class:`~megafs.fs.inode.Inode` to and from the
msgpack record of a leaf page (docs/format.md section 7). Pure: no I/O.

Owns: the record's fields, the body (a folder's entries, a symlink's
target, a file's chunk map and inline content), the wrapped content key,
and whether a body goes inline or into an object of its own. Decoding
validates every field and raises only IntegrityError naming the object;
encoding hands new body objects to the caller (``uploads``) and replaced
ones to ``garbage``.

May not touch: the store, :class:`~megafs.vault.vault.Vault` or Content (it
loads and stores nothing; of the vault layer it uses only pure helpers and
types), the inode table, pages, locks, commits.
"""

from __future__ import annotations

import stat
from typing import Any

import msgpack
from sortedcontainers import SortedDict  # type: ignore[import-untyped]

from ..errors import IntegrityError
from ..format import crypto
from ..format.crypto import Keys, Layout
from ..vault.content import ChunkRef
from ..vault.root import expect_bytes
from ..vault.tables import MetaJob
from ..vault.vault import KIND_BODY
from .inode import Inode

#: Bodies larger than this (msgpack bytes) become objects of their own.
BODY_INLINE_MAX = 8192


class RecordCodec:
    """Encodes and decodes the inode records of one vault.

    ``packed``: the vault's format packs small chunks, so chunk-map entries of
    packed chunks are valid.
    """

    def __init__(self, keys: Keys, layout: Layout, *, packed: bool) -> None:
        self.keys = keys
        self.layout = layout
        self.packed = packed

    def decode(self, ino: int, rec: Any, name: str) -> Inode:
        """The inode of record ``rec`` (from object ``name``). IntegrityError if
        anything in it is malformed or fails authentication."""
        try:
            node = Inode(
                ino, int(rec["m"]), int(rec["u"]), int(rec["g"]), file_id=expect_bytes(rec["f"])
            )
            node.nlink = int(rec["n"])
            node.size = int(rec["s"])
            atime, mtime, ctime = rec["t"]
            node.atime, node.mtime, node.ctime = int(atime), int(mtime), int(ctime)
            node.rdev = int(rec.get("r", 0))
            if "x" in rec:
                node.xattrs = {expect_bytes(k): expect_bytes(v) for k, v in rec["x"].items()}
            if "k" in rec:
                node.key_from(expect_bytes(rec["k"]), self, name)
            node.body_dirty = False
            if "B" in rec:
                node.body_ref = expect_bytes(rec["B"])
                node.body_loaded = False
            else:
                self.decode_body(node, rec["b"], name)
            if node.is_reg and not node.has_key:
                raise ValueError("regular file without a file key")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise IntegrityError(name, f"malformed inode {ino}: {e!r}") from None
        return node

    def unwrap_key(self, node: Inode, origin: str) -> bytes:
        """``node``'s content key, unwrapped from its record (read from object
        ``origin``). IntegrityError if it fails authentication."""
        assert node.wrapped_key is not None
        try:
            return crypto.unwrap_file_key(self.keys, node.file_id, node.wrapped_key)
        except crypto.AuthFailed:
            raise IntegrityError(origin, f"file key of inode {node.ino} fails") from None

    def decode_body(self, node: Inode, body: Any, name: str) -> None:
        """Fill ``node``'s body fields from ``body``. IntegrityError if malformed."""
        try:
            if node.is_dir:
                node.parent = int(body["p"])
                node.next_cookie = int(body["n"])
                for ent_name, child, cookie in body["e"]:
                    node.entries[expect_bytes(ent_name)] = (int(child), int(cookie))
                    if node.order is None:
                        node.order = SortedDict()
                    node.order[int(cookie)] = expect_bytes(ent_name)
            elif stat.S_ISLNK(node.mode):
                node.target = expect_bytes(body["l"])
            elif node.is_reg:
                cs = self.layout.chunk_size
                for entry in body.get("c", []):
                    if len(entry) == 3:
                        idx, obj, length = entry
                        off, pno = 0, -1
                    elif len(entry) == 5 and self.packed:
                        idx, obj, length, off, pno = entry
                        if not (0 <= int(off) < 1 << 40 and 0 <= int(pno) < 1 << 62):
                            raise ValueError(f"chunk {idx} pack {pno} offset {off} out of range")
                    else:
                        raise ValueError(f"chunk entry of {len(entry)} fields")
                    if not (0 <= int(idx) < 1 << 44 and 0 < int(length) <= cs):
                        raise ValueError(f"chunk {idx} length {length} out of range")
                    node.chunks[int(idx)] = ChunkRef(
                        expect_bytes(obj), int(length), int(off), int(pno)
                    )
                if "i" in body:
                    if node.file_key is None:
                        raise ValueError("inline data without a file key")
                    sealed = expect_bytes(body["i"])
                    try:
                        node.small = crypto.open_for(
                            self.keys,
                            node.file_key,
                            sealed,
                            crypto.inline_aad(self.keys.vault_id, node.file_id, len(sealed)),
                        )
                    except crypto.AuthFailed:
                        raise IntegrityError(name, f"inline data of inode {node.ino}") from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise IntegrityError(name, f"malformed body of inode {node.ino}: {e!r}") from None

    def encode_body(self, node: Inode) -> Any:
        """The body of ``node`` as a msgpack-able value (seals inline content)."""
        if node.is_dir:
            return {
                "p": node.parent,
                "n": node.next_cookie,
                "e": [[n, i, c] for n, (i, c) in node.entries.items()],
            }
        if stat.S_ISLNK(node.mode):
            return {"l": node.target}
        if node.is_reg:
            body: dict[str, Any] = {
                "c": [
                    [i, r.obj, r.length, r.off, r.pno] if r.packed else [i, r.obj, r.length]
                    for i, r in sorted(node.chunks.items())
                ]
            }
            if node.small is not None:
                assert node.file_key is not None
                sealed_len = len(node.small) + crypto.sealed_overhead(self.keys)
                body["i"] = crypto.seal_for(
                    self.keys,
                    node.file_key,
                    node.small,
                    crypto.inline_aad(self.keys.vault_id, node.file_id, sealed_len),
                )
            return body
        return {}

    def encode(self, node: Inode, uploads: list[MetaJob], garbage: list[bytes]) -> Any:
        """The record of ``node``. A body above :data:`BODY_INLINE_MAX` gets a
        fresh object (appended to ``uploads``); the body object it replaces,
        if any, is appended to ``garbage``. Updates ``node``'s body fields."""
        rec: dict[str, Any] = {
            "m": node.mode,
            "u": node.uid,
            "g": node.gid,
            "n": node.nlink,
            "s": node.size,
            "t": [node.atime, node.mtime, node.ctime],
            "f": node.file_id,
        }
        if node.rdev:
            rec["r"] = node.rdev
        if node.xattrs:
            rec["x"] = node.xattrs
        if node.has_key:  # a key read from a record is carried over still wrapped
            if node.wrapped_key is None:
                assert node.file_key is not None
                node.wrapped_key = crypto.wrap_file_key(
                    self.keys, node.file_id, node.file_key
                )
            rec["k"] = node.wrapped_key
        if not node.body_loaded or (not node.body_dirty and node.body_ref is not None):
            rec["B"] = node.body_ref
            return rec
        body = self.encode_body(node)
        packed = msgpack.packb(body, use_bin_type=True)
        if len(packed) > BODY_INLINE_MAX:
            if node.body_ref is not None:
                garbage.append(node.body_ref)
            node.body_ref = crypto.new_id()
            uploads.append((KIND_BODY, node.body_ref, body))
            rec["B"] = node.body_ref
        else:
            if node.body_ref is not None:
                garbage.append(node.body_ref)
                node.body_ref = None
            rec["b"] = body
        node.body_dirty = False
        return rec

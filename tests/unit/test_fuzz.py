"""Property and fuzz tests on every parser of bytes that come from the store.

The store is the adversary (docs/security.md): whatever bytes it serves, a
parser may only succeed with exactly what megafs wrote, or fail with the one
exception its caller expects. Nothing else may escape (a ``KeyError`` or an
``OverflowError`` from a decoder would reach the FUSE adapter as an "internal
error", and a huge length taken from the data could exhaust memory).

* header: random and mutated headers, ``parse``, ``unlock`` and
  ``unlock_recovery`` -> only NotAVault, UnsupportedVersion, CorruptHeader,
  WrongPassphrase; success only for the unmodified header;
* root pointer: ``Vault.open_root`` on random and mutated sealed roots, and
  ``Root.decode`` on random bytes and on validly sealed msgpack garbage
  -> only IntegrityError;
* metadata: leaf pages, index nodes and directory bodies, mutated before or
  after sealing, through the model's real loading code (``load_page``,
  ``RadixIndex.mid``, ``load_body``) and its decoders (``RecordCodec.decode``,
  ``decode_body``) -> only IntegrityError;
* content: ``crypto.open_blocks`` on random and mutated chunks, and
  ``open_sealed`` on random seals -> only AuthFailed;
* the local journal: ``Journal.read_segment`` on random and mutated segments returns
  exactly the records before the first damaged one, and never raises.

Re-sealing garbage with the vault's own keys (which the store does not have)
goes beyond the threat model on purpose: it checks the decoders behind the
AEAD, so that a bug in one version of megafs cannot crash another.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megafs.client.journal import Journal
from megafs.errors import (
    CorruptHeader,
    IntegrityError,
    NotAVault,
    UnsupportedVersion,
    WrongPassphrase,
)
from megafs.format import crypto, header
from megafs.format.crypto import KdfParams, Keys
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO, Inode
from megafs.stores import LocalStore
from megafs.vault.root import Root
from megafs.vault.tables import MID_BITS, PAGE_BITS
from megafs.vault.vault import KIND_BODY, KIND_INDEX, KIND_LEAF, Vault, obj_name

from ..support.helpers import FAST_KDF, PASS, SMALL

#: Examples per test; MEGAFS_FUZZ_EXAMPLES=5000 for a longer hunt.
FUZZ = settings(
    max_examples=int(os.environ.get("MEGAFS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HEADER_ERRORS = (NotAVault, UnsupportedVersion, CorruptHeader, WrongPassphrase)


# --- what a store might serve: byte mutations and msgpack garbage ---------------------


@st.composite
def mutated(draw: st.DrawFn, original: bytes, max_edits: int = 4) -> bytes:
    """``original`` with a few random edits: flips, overwrites, cuts, insertions."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "append"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=40))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 40))]
        else:
            data += draw(st.binary(min_size=1, max_size=40))
    return bytes(data)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=40),
)
#: Anything msgpack can carry: what a decoder might find inside a valid seal.
garbage = st.recursive(
    _scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=3), st.integers(-3, 300), st.binary(max_size=3)),
            kids,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


def pack(value: Any) -> bytes:
    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out


@st.composite
def deep_mutation(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with one node somewhere inside replaced, removed or added to."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(value, key=repr)))
        out = dict(value)
        action = draw(st.sampled_from(["descend", "descend", "delete", "replace"]))
        if action == "delete":
            del out[key]
        elif action == "replace":
            out[key] = draw(garbage)
        else:
            out[key] = draw(deep_mutation(value[key]))
        return out
    if isinstance(value, list) and value and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(value) - 1))
        out_list = list(value)
        action = draw(st.sampled_from(["descend", "descend", "delete", "replace", "append"]))
        if action == "delete":
            del out_list[i]
        elif action == "replace":
            out_list[i] = draw(garbage)
        elif action == "append":
            out_list.append(draw(garbage))
        else:
            out_list[i] = draw(deep_mutation(value[i]))
        return out_list
    return draw(garbage)


# --- one real vault with a bit of everything -------------------------------------------


@dataclass(repr=False)
class Sample:
    tmp: Path
    vault: Vault
    header: bytes
    recovery: bytes
    root_sealed: bytes
    #: what ``root_sealed`` opens to: the model's committed root, and the
    #: digest of the root it replaced (``prev``, which only the sealed copy has)
    root: Root
    #: (kind, object id, sealed bytes, decoded payload) of every metadata object
    meta: list[tuple[int, bytes, bytes, Any]]
    #: (file id, file key, object id, chunk index, length, sealed, plaintext,
    #: offset in its pack or None): ``sealed`` is the chunk's own bytes (a
    #: packed chunk's slice of its pack)
    chunks: list[tuple[bytes, bytes, bytes, int, int, bytes, bytes, int | None]]
    journal_segment: int
    journal_bytes: bytes
    journal_records: list[list[Any]]

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"Sample({self.tmp})"

    def of_kind(self, kind: int) -> list[tuple[bytes, bytes, Any]]:
        return [(o, s, p) for k, o, s, p in self.meta if k == kind]

    @property
    def keys(self) -> Keys:
        return self.vault.keys


async def _build(tmp: Path) -> Sample:
    store = LocalStore(str(tmp / "store"), create=True)
    vault, recovery = await Vault.init(store, PASS, FAST_KDF, SMALL)
    fs = await Filesystem.load(vault, journal=Journal(str(tmp / "cache"), vault.keys))
    d = await fs.mkdir(ROOT_INO, b"dir", 0o755, 0, 0)
    for i in range(300):  # enough entries for an external body object
        await fs.mknod(d.ino, b"entry with a longish name %04d" % i, stat.S_IFIFO | 0o644, 0, 0, 0)
    small = await fs.create(ROOT_INO, b"small", 0o644, 0, 0)
    await fs.write(small.ino, 0, b"inline content")
    big = await fs.create(d.ino, b"big", 0o600, 0, 0)
    await fs.write(big.ino, 0, os.urandom(2 * SMALL.chunk_size + 5000))
    await fs.symlink(ROOT_INO, b"link", b"dir/big", 0, 0)
    await fs.link(small.ino, d.ino, b"hard")
    await fs.setxattr(small.ino, b"user.x", b"value")
    await fs.commit()
    committed = copy.deepcopy(fs.root)
    chunks = []
    big_node = fs.table.inodes[big.ino]
    assert big_node.file_key is not None
    for idx, ref in sorted(big_node.chunks.items()):
        sealed = await store.get(obj_name(ref.obj))
        sealed = sealed[ref.off : ref.off + SMALL.sealed_len(ref.length)]
        plain = await fs.read(big.ino, idx * SMALL.chunk_size, ref.length)
        chunks.append(
            (
                big_node.file_id, big_node.file_key, ref.obj, idx, ref.length, sealed, plain,
                ref.pack_off,
            )
        )
    # uncommitted: these only live in the journal
    await fs.write(big.ino, 100, b"journalled write")
    await fs.rename(ROOT_INO, b"small", d.ino, b"moved")
    await fs.mkdir(d.ino, b"sub", 0o700, 0, 0)
    assert fs.journal is not None
    seg = fs.journal.segment
    journal_bytes = await trio.Path(fs.journal.segment_path(seg)).read_bytes()
    records, whole = fs.journal.read_segment(seg)
    assert whole
    assert [r[0] for r in records] == ["wr", "rn", "mk"]

    meta: list[tuple[int, bytes, bytes, Any]] = []

    async def grab(kind: int, obj: bytes) -> Any:
        sealed = await store.get(obj_name(obj))
        payload = vault.open_meta(kind, obj, sealed)
        meta.append((kind, obj, sealed, payload))
        return payload

    assert fs.root.itab is not None
    top = await grab(KIND_INDEX, fs.root.itab)
    for mid_obj in top.values():
        mid = await grab(KIND_INDEX, bytes(mid_obj))
        for leaf_obj in mid.values():
            await grab(KIND_LEAF, bytes(leaf_obj))
    for node in fs.table.inodes.values():
        if node.body_ref is not None:
            await grab(KIND_BODY, node.body_ref)
    assert {k for k, *_ in meta} == {KIND_INDEX, KIND_LEAF, KIND_BODY}
    ptr = await store.read_pointer("root")
    hptr = await store.read_pointer("header")
    assert ptr is not None and hptr is not None
    root = vault.open_root(ptr.data)
    assert root.prev is not None
    assert dataclasses.replace(root, prev=None) == dataclasses.replace(committed, prev=None)
    return Sample(
        tmp, vault, hptr.data, recovery, ptr.data, root, meta, chunks, seg, journal_bytes,
        records,
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sample]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with mock.patch.dict(os.environ, {"MEGAFS_STATE_DIR": str(tmp / "state")}):
        yield trio.run(_build, tmp)


# --- the header ----------------------------------------------------------------------

_real_argon2id = crypto.argon2id


def _argon2id_unless_changed(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    """Argon2id for the sample's own parameters; a cheap stand-in for any other.

    The KDF parameters are in the slot's associated data, so a slot whose
    parameters were changed cannot open under *any* key: the real Argon2id
    (at up to 4 GiB and 64 passes) would fail the tag exactly as this does.
    """
    params.check()
    if params == FAST_KDF:
        return _real_argon2id(passphrase, salt, params)
    return crypto.hkdf(passphrase + salt, b"", b"fuzz stand-in for Argon2id")


def check_header_opens(sample: Sample) -> None:
    """The positive control of the header tests: the unmodified header parses
    and opens with both secrets, so a parser that refused everything fails."""
    hdr, _, _ = header.parse(sample.header)
    assert hdr.vault_id == sample.vault.vault_id
    for _, keys in (
        header.unlock(sample.header, PASS),
        header.unlock_recovery(sample.header, sample.recovery),
    ):
        assert keys.master == sample.keys.master


def check_header(data: bytes, sample: Sample) -> None:
    """Every header entry point: the allowed errors, or the unmodified header
    (which must open: :func:`check_header_opens`)."""
    check_header_opens(sample)
    try:
        hdr, _, _ = header.parse(data)
    except HEADER_ERRORS:
        pass
    else:
        assert hdr.vault_id == data[10:26]
    with mock.patch("megafs.format.crypto.argon2id", _argon2id_unless_changed):
        attempts: list[Callable[[], tuple[header.Header, Keys]]] = [
            lambda: header.unlock(data, PASS),
            lambda: header.unlock_recovery(data, sample.recovery),
        ]
        for attempt in attempts:
            try:
                _, keys = attempt()
            except HEADER_ERRORS:
                continue
            assert data == sample.header, "a modified header opened"
            assert keys.master == sample.keys.master


@FUZZ
@given(data=st.data())
def test_header_mutations(sample: Sample, data: st.DataObject) -> None:
    check_header(data.draw(mutated(sample.header)), sample)


@FUZZ
@given(tail=st.binary(max_size=400), magic=st.booleans())
def test_header_random_bytes(sample: Sample, tail: bytes, magic: bool) -> None:
    check_header((header.MAGIC if magic else b"") + tail, sample)


@st.composite
def plausible_headers(draw: st.DrawFn) -> bytes:
    """Headers built field by field from random values, lengths mostly right."""
    u32 = st.integers(0, 2**32 - 1)
    out = bytearray(header.MAGIC)
    out += struct.pack(">H", draw(st.sampled_from([0, 1, 1, 1, 2, 0xFFFF])))
    out += draw(st.binary(min_size=16, max_size=16))
    chunk, block = draw(st.one_of(u32, st.just(65536))), draw(st.one_of(u32, st.just(4096)))
    out += struct.pack(">II", chunk, block)
    nslots = draw(st.integers(0, 3))
    out.append(draw(st.one_of(st.just(nslots), st.integers(0, 255))))
    for _ in range(nslots):
        out.append(draw(st.integers(0, 3)))
        out += struct.pack(">III", draw(u32), draw(st.integers(0, 70)), draw(st.integers(0, 70)))
        out += draw(st.binary(min_size=16 + 60, max_size=16 + 60))
    out += draw(st.binary(min_size=32, max_size=32))
    return bytes(out)


@FUZZ
@given(data=plausible_headers())
def test_header_built_from_random_fields(sample: Sample, data: bytes) -> None:
    check_header(data, sample)


# --- the root pointer ----------------------------------------------------------------


def check_root_decode(plain: bytes) -> None:
    try:
        root = Root.decode(plain)
    except IntegrityError as e:
        assert e.obj == "root", e
        return
    assert isinstance(root.generation, int) and isinstance(root.next_ino, int)
    assert root.itab is None or isinstance(root.itab, bytes)
    assert all(isinstance(x, int) for x in root.orphans)


@FUZZ
@given(data=st.data())
def test_sealed_root_mutations(sample: Sample, data: st.DataObject) -> None:
    # the positive control: the unmodified pointer opens to the committed root
    assert sample.vault.open_root(sample.root_sealed) == sample.root
    sealed = data.draw(st.one_of(mutated(sample.root_sealed), st.binary(max_size=300)))
    try:
        root = sample.vault.open_root(sealed)
    except IntegrityError as e:
        assert e.obj == "root", e
        return
    assert sealed == sample.root_sealed
    assert root.itab is not None


_ID = st.binary(min_size=16, max_size=16)
_root_fields = {
    "v": st.just(1),
    "gen": st.integers(1, 2**40),
    "itab": st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
    "next": st.integers(2, 2**40),
    "orph": st.lists(st.integers(2, 2**40), max_size=3),
    "lease": st.one_of(
        st.none(),
        st.tuples(_ID, st.text(), st.integers(1, 2**22), st.floats()),
    ),
    "stats": st.lists(st.integers(0, 2**40), min_size=2, max_size=2),
    "jrnl": st.one_of(st.none(), st.tuples(_ID, st.integers(0, 99))),
    # record version 2 (several devices)
    "dlease": st.one_of(
        st.none(),
        st.tuples(_ID, st.text(), st.integers(1, 2**22), st.floats()),
    ),
    "devs": st.dictionaries(
        _ID,
        st.fixed_dictionaries(
            {
                "name": st.text(max_size=20),
                "pfx": st.integers(0, 2**24),
                "ino": st.integers(0, 2**63),
                "pack": st.integers(0, 2**63),
                "jrnl": st.one_of(st.none(), st.tuples(_ID, st.integers(0, 99))),
                "orph": st.lists(st.integers(2, 2**63), max_size=3),
                "t": st.integers(0, 2**63),
                "gen": st.integers(0, 2**40),
            }
        ),
        max_size=3,
    ),
}


@st.composite
def root_like(draw: st.DrawFn) -> Any:
    """A root record whose fields are each valid, or garbage, or missing."""
    out: dict[Any, Any] = {}
    for key, valid in _root_fields.items():
        choice = draw(st.integers(0, 5))
        if choice == 0:
            continue
        out[key] = draw(garbage) if choice == 1 else draw(valid)
    if draw(st.booleans()):
        out = draw(deep_mutation(out))
    return out


@FUZZ
@given(value=st.one_of(root_like(), garbage), raw=st.binary(max_size=200))
def test_root_decode_garbage(sample: Sample, value: Any, raw: bytes) -> None:
    # the positive controls: a real root record decodes, and sealed the way
    # this vault's format seals (committing in format 3) it opens
    assert Root.decode(sample.root.encode()) == sample.root
    assert sample.vault.open_root(reseal_root(sample, sample.root.encode())) == sample.root
    check_root_decode(raw)
    check_root_decode(pack(value))
    # and the same behind a valid seal, through Vault.open_root
    sealed = reseal_root(sample, pack(value))
    try:
        sample.vault.open_root(sealed)
    except IntegrityError as e:
        assert e.obj == "root", e


def reseal_root(sample: Sample, plain: bytes) -> bytes:
    """``plain`` sealed as a root pointer with the vault's own keys."""
    return crypto.seal_for(
        sample.keys, sample.keys.root, plain, crypto.root_aad(sample.vault.vault_id)
    )


# --- metadata objects through the model -------------------------------------------------


def fresh_fs(sample: Sample) -> Filesystem:
    """A read-only model over the sample vault with nothing loaded (no I/O here)."""
    return Filesystem(sample.vault, Root(generation=1, itab=None, next_ino=10**6), writable=False)


def plant(sample: Sample, kind: int, payload_bytes: bytes) -> bytes:
    """Seal ``payload_bytes`` as a metadata object of ``kind`` under a new name; return the id.

    It is sealed the way the vault's format seals (committing in format 3), so
    that it opens and the bytes reach the decoders behind the AEAD.
    """
    obj = crypto.new_id()
    sealed = crypto.seal_for(
        sample.keys,
        sample.keys.meta,
        payload_bytes,
        crypto.meta_aad(sample.vault.vault_id, kind, obj),
    )
    trio.run(sample.vault.store.put, obj_name(obj), sealed)
    return obj


def load_page(sample: Sample, leaf: bytes, page: int) -> Filesystem:
    """Load leaf object ``leaf`` as page ``page`` with the model's own code."""
    fs = fresh_fs(sample)
    hi, lo = page >> MID_BITS, page & ((1 << MID_BITS) - 1)
    fs.table.index.mids[hi] = {lo: leaf}
    trio.run(fs.load_page, page)
    return fs


def real_pages(sample: Sample) -> list[tuple[int, Any]]:
    """(page number, payload) of every real leaf page."""
    out = []
    for _, _, payload in sample.of_kind(KIND_LEAF):
        page = {int(k) >> PAGE_BITS for k in payload}
        assert len(page) == 1
        out.append((page.pop(), payload))
    return out


@st.composite
def inode_record(draw: st.DrawFn) -> Any:
    """A record whose fields are valid, garbage, or missing, with a body of the right shape."""
    mode = draw(
        st.one_of(
            st.sampled_from(
                [stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777, stat.S_IFIFO]
            ),
            garbage,
        )
    )
    body = draw(
        st.one_of(
            garbage,
            st.fixed_dictionaries(
                {},
                optional={
                    "p": st.one_of(st.integers(1, 99), garbage),
                    "n": st.one_of(st.integers(3, 99), garbage),
                    "e": st.one_of(
                        st.lists(st.tuples(st.binary(max_size=8), st.integers(), st.integers())),
                        garbage,
                    ),
                    "l": st.one_of(st.binary(max_size=20), garbage),
                    "c": st.one_of(
                        st.lists(
                            st.tuples(
                                st.integers(-1, 2**45),
                                st.binary(min_size=16, max_size=16),
                                st.integers(-1, 2**20),
                            ),
                            max_size=3,
                        ),
                        garbage,
                    ),
                    "i": st.one_of(st.binary(max_size=60), garbage),
                },
            ),
        )
    )
    fields = {
        "m": st.just(mode),
        "u": st.one_of(st.integers(0, 2**32), garbage),
        "g": st.one_of(st.integers(0, 2**32), garbage),
        "n": st.one_of(st.integers(0, 5), garbage),
        "s": st.one_of(st.integers(0, 2**50), garbage),
        "t": st.one_of(st.lists(st.integers(0, 2**62), min_size=3, max_size=3), garbage),
        "f": st.one_of(st.binary(min_size=16, max_size=16), garbage),
        "r": st.one_of(st.integers(0, 2**32), garbage),
        "x": st.one_of(st.dictionaries(st.binary(max_size=8), st.binary(max_size=8)), garbage),
        "k": st.one_of(st.binary(min_size=60, max_size=60), garbage),
        "B": st.one_of(st.binary(min_size=16, max_size=16), garbage),
        "b": st.just(body),
    }
    out = {}
    for key, strategy in fields.items():
        if draw(st.integers(0, 4)):
            out[key] = draw(strategy)
    return out


def check_decode(sample: Sample, ino: int, rec: Any) -> None:
    fs = fresh_fs(sample)
    try:
        node = fs.table.codec.decode(ino, rec, "leaf")
    except IntegrityError as e:
        assert e.obj == "leaf", e
        return
    assert isinstance(node, Inode)
    # an external body must decode safely too
    if isinstance(rec, dict) and "B" in rec:
        try:
            fs.table.codec.decode_body(node, rec.get("b"), "body")
        except IntegrityError as e:
            assert e.obj == "body", e


def check_real_record_decodes(sample: Sample, ino: int, rec: Any) -> None:
    """The positive control of the record tests: the unmodified record ``rec``
    decodes to the inode it describes, so a decoder that refused everything fails."""
    node = fresh_fs(sample).table.codec.decode(ino, rec, "leaf")
    assert (node.ino, node.mode, node.uid, node.gid) == (ino, rec["m"], rec["u"], rec["g"])
    assert (node.nlink, node.size, node.file_id) == (rec["n"], rec["s"], rec["f"])


@FUZZ
@given(rec=st.one_of(inode_record(), garbage))
def test_decode_synthetic_records(sample: Sample, rec: Any) -> None:
    _, payload = real_pages(sample)[0]
    ino = min(payload)
    check_real_record_decodes(sample, int(ino), payload[ino])
    check_decode(sample, 300, rec)


@FUZZ
@given(data=st.data())
def test_decode_mutated_real_records(sample: Sample, data: st.DataObject) -> None:
    _, payload = data.draw(st.sampled_from(real_pages(sample)))
    ino = data.draw(st.sampled_from(sorted(payload)))
    check_real_record_decodes(sample, int(ino), payload[ino])
    check_decode(sample, int(ino), data.draw(deep_mutation(payload[ino])))


@FUZZ
@given(data=st.data())
def test_leaf_pages_mutated_then_resealed(sample: Sample, data: st.DataObject) -> None:
    """Mutated msgpack bytes, or mutated structures, of real leaves, through ``load_page``."""
    page, payload = data.draw(st.sampled_from(real_pages(sample)))
    # the positive control: the unmodified page, planted the same way, loads whole
    fs = load_page(sample, plant(sample, KIND_LEAF, pack(payload)), page)
    assert fs.table.page_members[page] == {int(ino) for ino in payload}
    for ino in fs.table.page_members[page]:
        node = fs.table.inodes[ino]
        if not node.body_loaded:
            trio.run(fs.load_body, node)
    if data.draw(st.booleans()):
        raw = data.draw(mutated(pack(payload)))
    else:
        raw = pack(data.draw(st.one_of(deep_mutation(payload), garbage)))
    leaf = plant(sample, KIND_LEAF, raw)
    try:
        fs = load_page(sample, leaf, page)
    except IntegrityError as e:
        assert e.obj == obj_name(leaf), e
        return
    for ino in fs.table.page_members[page]:  # what did load can be used
        node = fs.table.inodes[ino]
        if not node.body_loaded:
            try:
                trio.run(fs.load_body, node)
            except IntegrityError as e:
                assert node.body_ref is not None and e.obj == obj_name(node.body_ref), e
                continue


@FUZZ
@given(data=st.data())
def test_stored_metadata_mutated(sample: Sample, data: st.DataObject) -> None:
    """Mutated sealed objects (the store's only power) fail authentication, always."""
    kind, obj, sealed, payload = data.draw(st.sampled_from(sample.meta))
    assert sample.vault.open_meta(kind, obj, sealed) == payload  # the positive control
    bad = data.draw(mutated(sealed))
    try:
        sample.vault.open_meta(kind, obj, bad)
    except IntegrityError as e:
        assert bad != sealed
        assert e.obj == obj_name(obj), e
    else:
        assert bad == sealed


@FUZZ
@given(data=st.data())
def test_index_nodes_and_bodies_resealed(sample: Sample, data: st.DataObject) -> None:
    """Mid indexes through ``RadixIndex.mid``, directory bodies through ``load_body``."""
    kind = data.draw(st.sampled_from([KIND_INDEX, KIND_BODY]))
    _, _, payload = data.draw(st.sampled_from(sample.of_kind(kind)))
    # the positive control: the unmodified object, planted the same way, loads as itself
    loaded = load_planted(sample, kind, plant(sample, kind, pack(payload)))
    if kind == KIND_INDEX:
        assert loaded == payload
    else:
        assert isinstance(loaded, Inode) and loaded.body_loaded
        assert (loaded.parent, loaded.next_cookie) == (payload["p"], payload["n"])
        assert loaded.entries == {name: (ino, cookie) for name, ino, cookie in payload["e"]}
    raw = pack(data.draw(st.one_of(deep_mutation(payload), garbage)))
    obj = plant(sample, kind, raw)
    try:
        load_planted(sample, kind, obj)
    except IntegrityError as e:
        assert e.obj == obj_name(obj), e


def load_planted(sample: Sample, kind: int, obj: bytes) -> Any:
    """Load the planted object ``obj`` with the model's own code: a mid index
    (``KIND_INDEX``) through ``RadixIndex.mid``, returning it, or a directory
    body through ``load_body``, returning the directory."""
    fs = fresh_fs(sample)
    if kind == KIND_INDEX:
        fs.table.index.top = {0: obj}
        mid = trio.run(fs.table.index.mid, 0)
        assert all(isinstance(k, int) and isinstance(v, bytes) for k, v in mid.items())
        return mid
    node = Inode(5, stat.S_IFDIR | 0o755, 0, 0)
    node.body_ref, node.body_loaded = obj, False
    trio.run(fs.load_body, node)
    return node


@FUZZ
@given(data=st.data())
def test_vault_open_with_a_resealed_top_index(sample: Sample, data: st.DataObject) -> None:
    """A whole ``Filesystem.load`` whose top index is garbage behind a valid seal."""
    top = sample.of_kind(KIND_INDEX)[0][2]  # the first object grabbed is the top index

    async def open_with_top(itab: bytes) -> Filesystem:
        vault = sample.vault
        root = await vault.read_root()
        root.generation += 1
        root.itab = itab
        await vault.commit_root(root)
        return await Filesystem.load(vault, writable=False)

    # the positive control: the unmodified top index, planted the same way,
    # opens the committed tree
    good = plant(sample, KIND_INDEX, pack(top))

    async def names_in_root() -> set[bytes]:
        fs = await open_with_top(good)
        return {name for name, _, _ in await fs.readdir(ROOT_INO, 0)}

    assert trio.run(names_in_root) == {b"dir", b"small", b"link"}
    raw = pack(data.draw(st.one_of(deep_mutation(top), garbage)))
    itab = plant(sample, KIND_INDEX, raw)

    async def attempt() -> None:
        await open_with_top(itab)

    with contextlib.suppress(IntegrityError):
        trio.run(attempt)


# --- content ------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_open_blocks_random_input(sample: Sample, data: st.DataObject) -> None:
    layout = SMALL
    fid, key, obj, real_idx, real_len, real_sealed, real_plain, real_off = sample.chunks[0]
    # the positive control: the real chunk opens to its plaintext
    real = (real_idx, real_len, 0, real_sealed, real_off)
    assert b"".join(crypto.open_blocks(sample.keys, layout, key, fid, obj, *real)) == real_plain
    chunk_len = data.draw(st.integers(1, layout.chunk_size))
    first = data.draw(st.integers(0, -(-chunk_len // layout.block_size) - 1))
    sealed = data.draw(st.binary(max_size=2 * layout.sealed_block + 100))
    idx = data.draw(st.integers(0, 2**44 - 1))
    try:
        out = crypto.open_blocks(sample.keys, layout, key, fid, obj, idx, chunk_len, first, sealed)
    except crypto.AuthFailed:
        return
    assert sealed == b"" and out == []


@FUZZ
@given(data=st.data())
def test_open_blocks_mutated_chunk(sample: Sample, data: st.DataObject) -> None:
    fid, key, obj, idx, length, sealed, plain, off = data.draw(st.sampled_from(sample.chunks))
    sb, bs = SMALL.sealed_block, SMALL.block_size
    nblocks = -(-length // bs)
    first = data.draw(st.integers(0, nblocks - 1))
    last = data.draw(st.integers(first + 1, nblocks))
    part = sealed[first * sb : min(len(sealed), last * sb)]
    # the positive control: the unmodified blocks open to their plaintext
    got = crypto.open_blocks(sample.keys, SMALL, key, fid, obj, idx, length, first, part, off)
    assert b"".join(got) == plain[first * bs : min(len(plain), last * bs)]
    bad = data.draw(mutated(part, max_edits=2))
    try:
        out = b"".join(
            crypto.open_blocks(sample.keys, SMALL, key, fid, obj, idx, length, first, bad, off)
        )
    except crypto.AuthFailed:
        assert bad != part
        return
    # Only the unmodified bytes open (or a cut exactly at a block boundary,
    # which the model rejects by length before it gets here).
    assert part.startswith(bad)
    assert out == plain[first * bs : first * bs + len(out)]
    assert len(bad) % sb == 0 or len(bad) == len(part)


@FUZZ
@given(sealed=st.binary(max_size=200), aad=st.binary(max_size=40))
def test_open_sealed_and_file_keys_random(sample: Sample, sealed: bytes, aad: bytes) -> None:
    # the positive controls: a real seal and a real wrapped key open
    fid, file_key = sample.chunks[0][:2]
    control = crypto.seal(sample.keys.meta, b"control", aad)
    assert crypto.open_sealed(sample.keys.meta, control, aad) == b"control"
    wrapped = crypto.wrap_file_key(sample.keys, fid, file_key)
    assert crypto.unwrap_file_key(sample.keys, fid, wrapped) == file_key
    with pytest.raises(crypto.AuthFailed):
        crypto.open_sealed(sample.keys.meta, sealed, aad)
    with pytest.raises(crypto.AuthFailed):
        crypto.unwrap_file_key(sample.keys, aad[:16].ljust(16, b"\0"), sealed)


# --- the journal ---------------------------------------------------------------------


def read_segment(sample: Sample, data: bytes) -> list[list[Any]]:
    """``Journal.read_segment`` of ``data`` stored as the sample's segment, in a scratch folder.

    Also checks that the segment is called whole exactly when every byte of it
    was read as records (so that a replay stops after a damaged one).
    """
    scratch = sample.tmp / "scratch-journal"
    journal = Journal(str(scratch), sample.keys)
    with open(journal.segment_path(sample.journal_segment), "wb") as f:
        f.write(data)
    records, whole = journal.read_segment(sample.journal_segment)
    used = sum(4 + len(r) for r in _sealed_lengths(data, len(records)))
    assert whole == (used == len(data))
    return records


def _sealed_lengths(data: bytes, count: int) -> list[bytes]:
    out, pos = [], 0
    for _ in range(count):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def _record_ends(sample: Sample) -> list[int]:
    ends, pos = [], 0
    while pos < len(sample.journal_bytes):
        (n,) = struct.unpack_from(">I", sample.journal_bytes, pos)
        pos += 4 + n
        ends.append(pos)
    return ends


@FUZZ
@given(data=st.data())
def test_journal_segment_mutations(sample: Sample, data: st.DataObject) -> None:
    original = sample.journal_bytes
    bad = data.draw(st.one_of(mutated(original), st.binary(max_size=300)))
    got = read_segment(sample, bad)
    first_change = next(
        (i for i, (a, b) in enumerate(zip(original, bad, strict=False)) if a != b),
        min(len(original), len(bad)),
    )
    intact = sum(1 for end in _record_ends(sample) if end <= first_change)
    assert got == sample.journal_records[:intact]


def test_fuzz_sample_is_what_it_claims(sample: Sample) -> None:
    """The sample holds every kind of object, and the helpers load real pages cleanly."""
    for page, _ in real_pages(sample):
        leaves = [o for o, _, p in sample.of_kind(KIND_LEAF) if min(p) >> PAGE_BITS == page]
        fs = load_page(sample, leaves[0], page)
        assert fs.table.page_members[page]
    assert len(sample.chunks) == 3
    assert [c[7] is not None for c in sample.chunks] == [False, False, True]  # one packed
    assert read_segment(sample, sample.journal_bytes) == sample.journal_records

"""The share page in a real browser: Debian's headless Chromium, driven by
chromedriver through Selenium, opens share links and saves what it
downloads to a folder, which is compared byte for byte.

One vault (default geometry: 1 MiB chunks, 64 KiB blocks) holds a file of
50 MiB and more, a folder (a packed small file, an inline file, a file with
a hole, a file in a subfolder) and files kept for the tests that damage the
store. Its shares are served two ways, as docs/sharing.md says: the store
folder published by Python's static web server (which ignores Range and
answers 200 with the whole object, the page's fallback), and a SeaweedFS
bucket through presigned URLs (206 answers). Every test runs on both.
"""

from __future__ import annotations

import base64
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from megafs.errors import FsError
from megafs.format import crypto
from megafs.format import share as fmt
from megafs.format.crypto import Layout
from megafs.fs.filesystem import Filesystem
from megafs.fs.inode import ROOT_INO
from megafs.fs.shares import share
from megafs.links.page import render, template
from megafs.stores import LocalStore, Store
from megafs.stores.s3 import S3Store
from megafs.vault.vault import Vault

from ..support.helpers import FAST_KDF, PASS, unique_prefix
from ..support.seaweed import SeaweedFS
from ..support.shares import Bucket, local_object_path, static_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MIB = 1 << 20
BIG = 50 * MIB + 12345
PASSWORD = "hunter2 is not a password"
#: How long a download or an error may take to show.
WAIT = 60.0


def _data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


#: What the vault holds: path -> content (written at offset 0, except the holes).
FILES: dict[str, bytes] = {
    "big.bin": _data(1, BIG),
    "docs/packed.txt": _data(2, 10_000),  # one packed chunk
    "docs/inline.txt": b"small enough to live in its record\n",
    "docs/sub/mid.bin": _data(3, MIB + MIB // 3),  # a chunk object and a packed chunk
    "tamper.bin": _data(4, 3 * MIB),
    "short.bin": _data(5, 2 * MIB),
    "gone.bin": _data(6, MIB),
    "streamed.bin": _data(9, 3 * MIB + 5),
    "secret.txt": _data(7, 5000),
}
#: A file with a hole: 100 bytes at 0, 7 bytes at 5 MiB + 3, size 6 MiB.
HOLEY = ("docs/holey.bin", [(0, _data(8, 100)), (5 * MIB + 3, b"the end")], 6 * MIB)


def _holey_content() -> bytes:
    _, parts, size = HOLEY
    out = bytearray(size)
    for off, data in parts:
        out[off : off + len(data)] = data
    return bytes(out)


@dataclass
class Site:
    """The vault's shares as a browser reaches them: ``links[name]`` opens
    share ``name``; ``chunks[path]`` are the objects of a file's chunks;
    ``damage(obj, how)`` flips a byte of, cuts or deletes a stored object."""

    links: dict[str, str]
    chunks: dict[str, list[bytes]]
    damage: Callable[[bytes, str], None]
    #: when share "expired" expires (it is made live: ``share`` refuses the past)
    expires: float
    #: the links are presigned URLs (which expire with the share)
    presigned: bool


#: The shares the tests open: name -> path in the vault.
SHARES = {
    "big": "big.bin",
    "docs": "docs",
    "tamper": "tamper.bin",
    "short": "short.bin",
    "gone": "gone.bin",
    "streamed": "streamed.bin",
    "password": "secret.txt",
    "expired": "docs/packed.txt",
}
#: Seconds share "expired" lives.
LIFETIME = 3.0


async def _fill(fs: Filesystem) -> None:
    for path, content in [*FILES.items(), (HOLEY[0], b"")]:
        parent = ROOT_INO
        *folders, name = path.split("/")
        for folder in folders:
            try:
                parent = (await fs.lookup(parent, folder.encode())).ino
            except FsError:
                parent = (await fs.mkdir(parent, folder.encode(), 0o755, 0, 0)).ino
        ino = (await fs.create(parent, name.encode(), 0o644, 0, 0)).ino
        for off in range(0, len(content), 4 * MIB):
            await fs.write(ino, off, content[off : off + 4 * MIB])
        if path == HOLEY[0]:
            for off, data in HOLEY[1]:
                await fs.write(ino, off, data)
            await fs.truncate(ino, HOLEY[2])
    await fs.commit()


async def _build(
    store: Store, base_url: str | None
) -> tuple[dict[str, str], dict[str, list[bytes]], float]:
    """Fill a new vault in ``store`` and share it with ``megafs share``'s
    code: (links by name, chunk objects by path, the expiry of "expired")."""
    vault, _ = await Vault.init(store, PASS, FAST_KDF, Layout())
    fs = await Filesystem.load(vault)
    try:
        await _fill(fs)
        links: dict[str, str] = {}
        for name, path in SHARES.items():
            if name == "expired":
                continue
            password = PASSWORD if name == "password" else None
            info = await share(fs, path, base_url=base_url, password=password)
            links[name] = info.link
        expires = time.time() + LIFETIME
        links["expired"] = (
            await share(fs, SHARES["expired"], base_url=base_url, expires=expires)
        ).link
        chunks: dict[str, list[bytes]] = {}
        for path in ("tamper.bin", "short.bin", "gone.bin", "streamed.bin"):
            node = await fs.table.get((await fs.lookup(ROOT_INO, path.encode())).ino)
            chunks[path] = [node.chunks[i].obj for i in sorted(node.chunks)]
        return links, chunks, expires
    finally:
        await fs.close()


@pytest.fixture(scope="module")
def _state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A state folder of the module's own (module fixtures run before the
    per-test one of conftest)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEGAFS_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        yield


def _flip_or_cut(data: bytes, how: str) -> bytes:
    out = bytearray(data)
    if how == "flip":
        out[len(out) // 2] ^= 0x01
    else:
        del out[-1:]
    return bytes(out)


def _local_site(base: Path) -> Iterator[Site]:
    """The vault in a local folder published by ``python -m http.server``."""
    root = base / "store"
    root.mkdir()

    async def build(url: str) -> tuple[dict[str, str], dict[str, list[bytes]], float]:
        store = LocalStore(str(root), create=True)
        try:
            return await _build(store, url)
        finally:
            await store.aclose()

    def damage(obj: bytes, how: str) -> None:
        path = local_object_path(root, obj)
        if how == "delete":
            path.unlink()
        else:
            path.write_bytes(_flip_or_cut(path.read_bytes(), how))

    with static_server(root, base / "http.log") as url:
        links, chunks, expires = trio.run(build, url)
        yield Site(links, chunks, damage, expires, presigned=False)


def _s3_site(server: SeaweedFS) -> Iterator[Site]:
    """The vault in a SeaweedFS bucket, its links presigned."""
    prefix = unique_prefix()
    bucket = Bucket(server, prefix)

    async def build() -> tuple[dict[str, str], dict[str, list[bytes]], float]:
        store = S3Store(server.bucket, prefix, endpoint=server.endpoint)
        try:
            return await _build(store, None)
        finally:
            await store.aclose()

    def damage(obj: bytes, how: str) -> None:
        key = bucket.object_key(obj)
        if how == "delete":
            bucket.delete(key)
        else:
            bucket.put(key, _flip_or_cut(bucket.get(key), how))

    with pytest.MonkeyPatch.context() as mp:
        for k, v in server.env.items():
            mp.setenv(k, v)
        links, chunks, expires = trio.run(build)
    yield Site(links, chunks, damage, expires, presigned=True)


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _state: None
) -> Iterator[Site]:
    if request.param == "s3":
        yield from _s3_site(request.getfixturevalue("seaweedfs"))
    else:
        yield from _local_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module, with a profile of its own."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: run scripts/setup", pytrace=False)
    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(tmp_path_factory.mktemp("downloads")),
            "download.prompt_for_download": False,
            "profile.default_content_setting_values.automatic_downloads": 1,
        },
    )
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def downloads(browser: webdriver.Chrome, tmp_path: Path) -> Path:
    """An empty folder where this test's downloads land."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)}
    )
    return folder


def _open(browser: webdriver.Chrome, link: str) -> None:
    browser.get("about:blank")  # a new document even when only the fragment changes
    browser.get(link)


def _text_of(browser: webdriver.Chrome, element: str, timeout: float = WAIT) -> str:
    """The text of element ``element`` once it has some."""
    try:
        WebDriverWait(browser, timeout, poll_frequency=0.05).until(
            lambda d: d.find_element(By.ID, element).text.strip()
        )
    except TimeoutException:
        status = browser.find_element(By.ID, "status").text
        error = browser.find_element(By.ID, "error").text
        pytest.fail(f"no {element} after {timeout} s (status {status!r}, error {error!r})")
    text: str = browser.find_element(By.ID, element).text
    return text


def _saved(folder: Path, name: str, size: int) -> bytes:
    """The content of ``name`` once Chromium has finished saving it."""
    path = folder / name
    deadline = time.monotonic() + WAIT
    while True:
        names = {p.name for p in folder.iterdir()}
        done = path.exists() and not any(n.endswith(".crdownload") for n in names)
        if done and path.stat().st_size == size:
            return path.read_bytes()
        if time.monotonic() > deadline:
            pytest.fail(f"{name} not saved after {WAIT} s; the folder holds {sorted(names)}")
        time.sleep(0.05)


def _download(browser: webdriver.Chrome, folder: Path, button: str, name: str, size: int) -> bytes:
    browser.find_element(By.ID, button).click()
    _finished(browser)
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "status").text == f"Saved {name}"
    return _saved(folder, name, size)


def _finished(browser: webdriver.Chrome) -> None:
    """Wait until the page has saved a file or shown an error."""
    WebDriverWait(browser, WAIT, poll_frequency=0.05).until(
        lambda d: (
            d.find_element(By.ID, "status").text.startswith("Saved ")
            or d.find_element(By.ID, "error").text
        )
    )


def _nothing_saved(folder: Path) -> None:
    time.sleep(0.5)  # a download the page started would have begun by now
    assert list(folder.iterdir()) == []


def _buttons(browser: webdriver.Chrome) -> dict[str, str]:
    """File path -> the id of its Download button, from the listing."""
    out: dict[str, str] = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "#files tr"):
        cells = row.find_elements(By.TAG_NAME, "td")
        button = cells[2].find_element(By.TAG_NAME, "button").get_attribute("id")
        assert button is not None
        out[cells[0].text] = button
    return out


def test_big_file(site: Site, browser: webdriver.Chrome, downloads: Path) -> None:
    _open(browser, site.links["big"])
    _text_of(browser, "summary")
    assert _buttons(browser) == {"big.bin": "download-0"}
    started = time.monotonic()
    got = _download(browser, downloads, "download-0", "big.bin", BIG)
    assert got == FILES["big.bin"]
    print(f"50 MiB in the browser: {time.monotonic() - started:.1f} s")


def test_folder(site: Site, browser: webdriver.Chrome, downloads: Path) -> None:
    _open(browser, site.links["docs"])
    _text_of(browser, "summary")
    buttons = _buttons(browser)
    want = {p.removeprefix("docs/"): c for p, c in FILES.items() if p.startswith("docs/")}
    want[HOLEY[0].removeprefix("docs/")] = _holey_content()
    assert sorted(buttons) == sorted(want)
    assert sorted(buttons.values()) == [f"download-{i}" for i in range(len(want))]
    for path, content in sorted(want.items()):
        name = path.rsplit("/", 1)[-1]
        assert _download(browser, downloads, buttons[path], name, len(content)) == content


def test_tampered_chunk(site: Site, browser: webdriver.Chrome, downloads: Path) -> None:
    site.damage(site.chunks["tamper.bin"][1], "flip")
    _open(browser, site.links["tamper"])
    browser.find_element(By.ID, "download-0").click()
    assert "damaged or tampered" in _text_of(browser, "error")
    assert not browser.find_element(By.ID, "status").text.startswith("Saved")
    _nothing_saved(downloads)


def test_truncated_object(site: Site, browser: webdriver.Chrome, downloads: Path) -> None:
    site.damage(site.chunks["short.bin"][1], "cut")
    _open(browser, site.links["short"])
    browser.find_element(By.ID, "download-0").click()
    assert "damaged or tampered" in _text_of(browser, "error")
    _nothing_saved(downloads)


#: A stand-in for the File System Access API's file picker and writable
#: stream (a test cannot answer the real picker): it keeps what is written,
#: and whether the stream was closed or aborted.
FAKE_PICKER = """
window.__saved = {parts: [], closed: false, aborted: false};
window.showSaveFilePicker = async () => ({
  createWritable: async () => ({
    write: async (p) => { window.__saved.parts.push(new Uint8Array(p)); },
    close: async () => { window.__saved.closed = true; },
    abort: async () => { window.__saved.aborted = true; },
  }),
});
document.getElementById("stream").checked = true;
"""
#: What the fake stream was given: (closed, aborted, the bytes written, base64).
SAVED = """
const s = window.__saved;
let bin = "";
for (const p of s.parts) for (let i = 0; i < p.length; i += 32768)
  bin += String.fromCharCode.apply(null, p.subarray(i, i + 32768));
return [s.closed, s.aborted, btoa(bin)];
"""


def _streamed(browser: webdriver.Chrome) -> tuple[bool, bool, bytes]:
    closed, aborted, data = browser.execute_script(SAVED)
    return bool(closed), bool(aborted), base64.b64decode(data)


def test_streamed_to_disk(site: Site, browser: webdriver.Chrome, downloads: Path) -> None:
    """With "Save to disk as it downloads", verified bytes go to the file's
    writable stream in order, and it is closed once all verified; a chunk
    that fails aborts the stream (the browser then discards its temporary
    file), after only verified bytes were written."""
    content = FILES["streamed.bin"]
    _open(browser, site.links["streamed"])
    _text_of(browser, "summary")
    browser.execute_script(FAKE_PICKER)
    browser.find_element(By.ID, "download-0").click()
    _finished(browser)
    assert browser.find_element(By.ID, "status").text == "Saved streamed.bin"
    assert _streamed(browser) == (True, False, content)

    site.damage(site.chunks["streamed.bin"][2], "flip")
    _open(browser, site.links["streamed"])
    _text_of(browser, "summary")
    browser.execute_script(FAKE_PICKER)
    browser.find_element(By.ID, "download-0").click()
    assert "damaged or tampered" in _text_of(browser, "error")
    closed, aborted, written = _streamed(browser)
    assert (closed, aborted) == (False, True)
    assert written == content[: 2 * MIB]  # chunks 0 and 1, verified
    _nothing_saved(downloads)


def test_deleted_object(site: Site, browser: webdriver.Chrome, downloads: Path) -> None:
    site.damage(site.chunks["gone.bin"][0], "delete")
    _open(browser, site.links["gone"])
    browser.find_element(By.ID, "download-0").click()
    error = _text_of(browser, "error")
    assert "revoked or has expired" in error
    assert "HTTP 404" in error or "HTTP 403" in error
    _nothing_saved(downloads)


def test_wrong_key(site: Site, browser: webdriver.Chrome) -> None:
    page, _ = fmt.parse_link(site.links["big"])
    _open(browser, fmt.make_link(page, crypto.random_bytes(32)))
    assert "wrong key" in _text_of(browser, "error").lower()
    assert browser.find_elements(By.ID, "download-0") == []
    _open(browser, page)
    assert "no key" in _text_of(browser, "error")


def test_password(site: Site, browser: webdriver.Chrome, downloads: Path) -> None:
    _open(browser, site.links["password"])
    field = browser.find_element(By.ID, "password")
    field.send_keys("not the password")
    browser.find_element(By.ID, "unlock").click()
    assert "wrong password" in _text_of(browser, "error").lower()
    assert browser.find_elements(By.ID, "download-0") == []
    field.clear()
    field.send_keys(PASSWORD)
    browser.find_element(By.ID, "unlock").click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.ID, "download-0"))
    assert browser.find_element(By.ID, "error").text == ""
    content = FILES["secret.txt"]
    assert _download(browser, downloads, "download-0", "secret.txt", len(content)) == content


def test_expired(site: Site, browser: webdriver.Chrome) -> None:
    """Past its expiry the page says so and shows nothing else. (A presigned
    page URL expires with the share: the store refuses the page itself.)"""
    time.sleep(max(0.0, site.expires - time.time()) + 0.1)
    page, _ = fmt.parse_link(site.links["expired"])
    if site.presigned:
        assert httpx.get(page, timeout=10).status_code == 403
        return
    _open(browser, site.links["expired"])
    assert _text_of(browser, "error").startswith("This link expired on ")
    assert browser.find_elements(By.CSS_SELECTOR, "#files tr") == []
    assert not browser.find_element(By.ID, "listing").is_displayed()


def test_page_is_self_contained() -> None:
    """The page names no other resource: nothing to load but itself."""
    text = template()
    for needle in ("<link", "src=", "@import", "url(", "//cdn", "https://"):
        assert needle not in text, needle
    env = fmt.Envelope(crypto.new_id(), b"sealed", b"owner", fmt.PasswordParams(b"s" * 16))
    page = render(env)
    assert fmt.Envelope.from_page(page) == env
    assert page.count(fmt.ENVELOPE_OPEN.encode()) == 1

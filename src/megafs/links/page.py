"""The share page: ``page.html`` (shipped in the package) with a share's
envelope in its one placeholder.

The page is one self-contained HTML file, its script inline and nothing
fetched from anywhere but the store that serves it (docs/sharing.md). In the
recipient's browser it reads the link key from the URL's fragment, opens the
manifest, lists the shared files and downloads each one by fetching its
chunks and opening every block with WebCrypto before any byte is saved.
Pure: no I/O besides reading the template from the package.
"""

from __future__ import annotations

import functools
from importlib import resources

from ..format.share import ENVELOPE_CLOSE, ENVELOPE_OPEN, Envelope

#: The line of ``page.html`` that :func:`render` replaces.
PLACEHOLDER = ENVELOPE_OPEN + "__MEGAFS_ENVELOPE__" + ENVELOPE_CLOSE


@functools.cache
def template() -> str:
    """``page.html``, checked to hold the placeholder exactly once."""
    text = resources.files(__package__).joinpath("page.html").read_text("utf-8")
    if text.count(PLACEHOLDER) != 1 or text.count(ENVELOPE_OPEN) != 1:
        raise RuntimeError("page.html must hold the envelope placeholder exactly once")
    return text


def render(envelope: Envelope) -> bytes:
    """The page of a share: the template with ``envelope`` in place of its
    placeholder (UTF-8). The envelope's JSON is base64url and plain keys, so
    it cannot close the script element early."""
    data = envelope.to_json()
    if "<" in data:  # to_json never makes one; a future field must not either
        raise ValueError("the envelope's JSON may not contain '<'")
    return template().replace(PLACEHOLDER, ENVELOPE_OPEN + data + ENVELOPE_CLOSE).encode()


__all__ = ["PLACEHOLDER", "render", "template"]

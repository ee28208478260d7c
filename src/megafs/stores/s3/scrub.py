"""Keeping this process's S3 credentials out of every log line and error message.

Owns the set of credential strings that stores of this process have used,
the patterns of credential-shaped text, and the logging filter that masks
both; and the name of the package's one logger (:data:`LOGGER_NAME`).

The access key ID, secret key and session token of every store are scrubbed
from the records of the loggers that could print them (botocore's signer logs
the canonical request, which holds ``x-amz-security-token``; httpcore and
urllib3 log traffic), together with anything shaped like an ``Authorization``
or token header or an XML/JSON credential field. Error messages that quote
the server or botocore pass their text through :func:`scrub`.

May not touch: anything of S3 itself (requests, answers, keys) and the rest
of this package, which it does not import; it only rewrites text and log
records.
"""

from __future__ import annotations

import logging
import re
import threading

import botocore.credentials

#: The one logger of the S3 store, whichever of its modules logs: the
#: package's name, so that records read as they did before it was split.
LOGGER_NAME = "megafs.stores.s3"

#: Header-like and field-like spellings of credentials, whatever the format
#: (a canonical request's ``name:value``, a dict's ``'name': 'value'``, XML
#: and JSON fields of credential answers).
_SECRET_PATTERNS = (
    re.compile(
        r"(?i)((?:authorization|x-amz-security-token|x-amz-credential|x-amz-signature"
        r"|aws_secret_access_key|aws_session_token|aws_access_key_id)['\"]?\s*[:=]\s*b?['\"]?)"
        r"[^'\"\n,}]+"
    ),
    re.compile(r"(?i)(credential=)[^,\s'\"]+"),
    re.compile(r"(?i)(signature=)[0-9a-f]+"),
    re.compile(r"(?i)(<(?:AWSAccessKeyId|AccessKeyId|SecretAccessKey|SessionToken|Token)>)[^<]*"),
    re.compile(
        r"(?i)([\"'](?:AccessKeyId|SecretAccessKey|SessionToken|Token|access_key|secret_key"
        r"|token)[\"']\s*:\s*b?[\"'])[^\"']*"
    ),
)

#: Every credential string a store of this process has used (so also the
#: ones that no pattern would recognise).
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()


def scrub(text: str) -> str:
    """``text`` with every known credential and credential-shaped field masked."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


class _ScrubFilter(logging.Filter):
    """Rewrites a record's message with :func:`scrub` (only records that pass
    the logger's level reach it, so it costs nothing unless debugging)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        clean = scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return True


_SCRUB_FILTER = _ScrubFilter()

#: Loggers whose records can carry credentials or signed headers.
_WATCHED_LOGGERS = (
    LOGGER_NAME,
    "botocore",
    "botocore.auth",
    "botocore.awsrequest",
    "botocore.client",
    "botocore.credentials",
    "botocore.endpoint",
    "botocore.hooks",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.retryhandler",
    "botocore.tokens",
    "botocore.utils",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpx",
    "urllib3",
    "urllib3.connectionpool",
)


def install_scrubber() -> None:
    """Put the scrubbing filter on every watched logger (a filter acts only on
    records made by its own logger, hence each by name), and on any botocore,
    httpcore or urllib3 logger that exists already. Idempotent."""
    names = set(_WATCHED_LOGGERS)
    names.update(
        n
        for n in list(logging.Logger.manager.loggerDict)
        if n.split(".")[0] in ("botocore", "httpcore", "urllib3")
    )
    for n in names:
        logger = logging.getLogger(n)
        if _SCRUB_FILTER not in logger.filters:
            logger.addFilter(_SCRUB_FILTER)


def remember_secrets(creds: botocore.credentials.ReadOnlyCredentials) -> None:
    """Add the strings of ``creds`` to those :func:`scrub` masks, for the process's life."""
    with _SECRETS_LOCK:
        _SECRETS.update(v for v in (creds.access_key, creds.secret_key, creds.token) if v)

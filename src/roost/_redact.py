"""Secrets in URLs (``user:password@``, ``?api_key=...``), hidden wherever a URL is shown.

A URL given to roost (a model's base URL, a Restate ingress) may carry credentials. The URL
itself is used as given; everything that renders one for people or for storage (error
messages, which the journal keeps; log lines; reprs; the CLI) goes through ``redact_url`` or,
for text that may hold URLs, ``redact_text``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"
_SECRET_WORDS = ("key", "token", "secret", "passw", "auth", "credential", "session")
_SECRET_KEYS = frozenset({"sig", "signature", "pwd", "code"})
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PAIR = re.compile(r"(?P<key>[^&;=#]+)=(?P<value>[^&;#]*)")


def is_secret_key(key: str) -> bool:
    """Whether a query-string key names a credential (``api_key``, ``token``, ``X-Auth``, ``sig``...)."""
    k = unquote(key).strip().lower()
    return k in _SECRET_KEYS or any(word in k for word in _SECRET_WORDS)


def redact_url(url: str) -> str:
    """``url`` with its user info and the values of credential-like query keys replaced by ``***``:
    ``https://bob:pw@host/v1?api_key=k&x=1`` -> ``https://***@host/v1?api_key=***&x=1``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL we can take apart: hide everything after the scheme
        scheme, sep, _ = url.partition("://")
        return f"{scheme}{sep}{MASK}" if sep else MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = _PAIR.sub(lambda m: f"{m['key']}={MASK}" if is_secret_key(m["key"]) else m[0], parts.query)
    fragment = _PAIR.sub(lambda m: f"{m['key']}={MASK}" if is_secret_key(m["key"]) else m[0], parts.fragment)
    out = f"{parts.scheme}://{netloc}" if parts.scheme or netloc else ""
    out += parts.path
    if query or "?" in url:
        out += f"?{query}"
    if fragment or "#" in url:
        out += f"#{fragment}"
    return out


def url_secrets(url: str) -> list[str]:
    """The credential strings inside ``url`` (user, password, secret query values), for
    removing them from text that may quote them without the URL around them."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.username, parts.password, *(unquote(s) for s in (parts.username, parts.password) if s)]
    for m in _PAIR.finditer(f"{parts.query}&{parts.fragment}"):
        if is_secret_key(m["key"]) and m["value"]:
            found += [m["value"], unquote(m["value"])]
    return [s for s in dict.fromkeys(found) if s]


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every URL in it redacted, and each of ``secrets`` (4 characters or more, so
    that a short value does not blank out ordinary words) replaced by ``***``."""
    text = _URL.sub(lambda m: redact_url(m[0]), text)
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text

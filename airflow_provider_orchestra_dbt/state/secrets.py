"""Masking secrets in every form they can take on their way into a log or an error.

A secret rarely leaks verbatim: a server echoes it back JSON-escaped, a URL
carries it percent-encoded, ``repr`` escapes its quotes and backslashes. Each
of those forms is masked, not only the exact string.

Standard library only: the state package must stay importable without Airflow.
The hook registers the same forms with Airflow's secrets masker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote

__all__ = ["MASK", "mask_url_credentials", "redact", "secret_forms", "url_credentials"]

MASK = "***"

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def secret_forms(secret: str) -> set[str]:
    """``secret`` and the encodings under which it can show up in text."""
    if not secret:
        return set()
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),  # '/' left alone, as in URL paths
        quote_plus(secret),
        quote_plus(secret, safe="/"),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        # Some JSON encoders (PHP's, Jackson's option) escape '/' as well.
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        repr(secret)[1:-1],
    }
    # Percent-encoding is case-insensitive, and some encoders emit lower-case hex.
    forms |= {_PERCENT_ESCAPE.sub(lambda m: m.group(0).lower(), form) for form in forms}
    return {form for form in forms if form}


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every form of every secret replaced by ``***``."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= secret_forms(secret)
    # Longest first, so that a form containing another is masked whole.
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def _split_credentials(url: str) -> tuple[str, str, str] | None:
    """``(scheme://, userinfo, rest)`` when ``url`` carries ``userinfo@``, else ``None``."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    after = url[match.end() :]
    # The last '@' rather than the end of the authority: a password pasted
    # unencoded may contain '/', '?' or '#', which would otherwise end the
    # authority early and leave the rest of the password in the "path". An
    # '@' in a real path is then masked along with the host, which is the
    # safe direction to err in.
    userinfo, at, rest = after.rpartition("@")
    if not at:
        return None
    return match.group(0), userinfo, rest


def mask_url_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` part replaced by ``***@``, for logs and messages."""
    parts = _split_credentials(url)
    if parts is None:
        return url
    scheme, _, rest = parts
    return f"{scheme}{MASK}@{rest}"


def url_credentials(url: object) -> tuple[str, ...]:
    """The secrets inside ``url``'s ``user:password@`` part (raw and decoded), if any."""
    if not isinstance(url, str) or not url:
        return ()
    parts = _split_credentials(url)
    if parts is None:
        return ()
    userinfo = parts[1]
    _, _, password = userinfo.partition(":")
    found = {userinfo, unquote(userinfo), password, unquote(password)}
    return tuple(sorted(value for value in found if value))

"""Reading the pod's and ServiceAccount's annotations exactly as the reference (Go) does, with its error texts: each
function here is the one place its annotation is read (the mutation and the policy rules both call it).

The reference parses numbers with `strconv.ParseInt`, trims skip-container names with `strings.TrimSpace` and quotes
values in errors with `strconv.Quote`; each is reproduced here so that our denials read like the reference's (then
add the annotation to fix).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

from webhook.core.constants import (
    DEFAULT_PROXY_PORT,
    DEFAULT_TOKEN_EXPIRATION,
    INJECT_PROXY_ANNOTATION,
    MAX_TOKEN_EXPIRATION,
    MIN_TOKEN_EXPIRATION,
    PROXY_PORT_ANNOTATION,
    SKIP_CONTAINERS_ANNOTATION,
    TENANT_ID_ANNOTATION,
    TOKEN_EXPIRATION_ANNOTATION,
)
from webhook.core.model import Denial, ServiceAccountInfo

# Go's unicode.IsSpace, which strings.TrimSpace uses. Python's str.strip() also trims \x1c-\x1f (file, group, record
# and unit separators); Go does not, so a container named "\x1fapp" is not the skip entry "app" there, nor here.
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
           "\u2028\u2029\u202f\u205f\u3000"

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               "\\": "\\\\", '"': '\\"'}


def go_quote(text: str) -> str:
    """Go's `strconv.Quote` (what `%q` prints): printable characters as they are, the rest escaped."""
    out = ['"']
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif _go_printable(char):
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def _go_printable(char: str) -> bool:
    """Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return char == " " or unicodedata.category(char)[0] in "LMNPS"


def go_parse_int(text: str, bits: int) -> int:
    """`strconv.ParseInt(text, 10, bits)` with Go's error text, so that messages match the reference."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isascii() and digits.isdigit()):  # [+-]?[0-9]+ exactly: isdigit alone takes other scripts' digits
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax")
    value = int(text)
    limit = 1 << (bits - 1)
    if not -limit <= value < limit:
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: value out of range")
    return value


def tenant_id(sa: ServiceAccountInfo, default_tenant: str) -> str:
    """The tenant a pod of this ServiceAccount gets: its tenant-id annotation when present, even when empty (then no
    AZURE_TENANT_ID is injected at all, as in the reference), else the webhook's AZURE_TENANT_ID."""
    return sa.annotations.get(TENANT_ID_ANNOTATION, default_tenant)


def proxy_requested(annotations: Mapping[str, str]) -> bool:
    """Inject the proxy when the annotation is present and not "false" (the reference ignores the value, #1210)."""
    value = annotations.get(INJECT_PROXY_ANNOTATION)
    return value is not None and value.strip().lower() != "false"


def proxy_port(annotations: Mapping[str, str]) -> int | Denial:
    """The proxy sidecar's port: the annotation, or 8000; unlike the reference, range-checked (1-65535)."""
    if PROXY_PORT_ANNOTATION not in annotations:
        return DEFAULT_PROXY_PORT
    fix = f"set annotation {PROXY_PORT_ANNOTATION} to a port number between 1 and 65535"
    try:
        port = go_parse_int(annotations[PROXY_PORT_ANNOTATION], 32)
    except ValueError as exc:
        return Denial(f"failed to parse proxy sidecar port: {exc} ({fix})", reason="InvalidProxyPort")
    if not 1 <= port <= 65535:
        return Denial(f"proxy sidecar port {port} not valid. Expected value to be between 1 and 65535 ({fix})",
                      reason="InvalidProxyPort")
    return port


def token_expiration(pod_annotations: Mapping[str, str], sa_annotations: Mapping[str, str]) -> int | Denial:
    """Pod annotation beats ServiceAccount annotation beats 3600; must lie in [3600, 86400]."""
    raw, source = pod_annotations.get(TOKEN_EXPIRATION_ANNOTATION, ""), "pod"
    if not raw:
        raw, source = sa_annotations.get(TOKEN_EXPIRATION_ANNOTATION, ""), "ServiceAccount"
    if not raw:
        return DEFAULT_TOKEN_EXPIRATION
    fix = (f"set the {source} annotation {TOKEN_EXPIRATION_ANNOTATION} to a whole number of seconds between "
           f"{MIN_TOKEN_EXPIRATION} and {MAX_TOKEN_EXPIRATION}")
    try:
        seconds = go_parse_int(raw, 64)
    except ValueError as exc:
        return Denial(f"{exc} ({fix})", reason="InvalidTokenExpiration")
    if not MIN_TOKEN_EXPIRATION <= seconds <= MAX_TOKEN_EXPIRATION:
        return Denial(f"token expiration {seconds} not valid. Expected value to be between "
                      f"{MIN_TOKEN_EXPIRATION} and {MAX_TOKEN_EXPIRATION} ({fix})", reason="InvalidTokenExpiration")
    return seconds


def skipped_container_names(annotations: Mapping[str, str]) -> frozenset[str]:
    """The container names in the `;`-separated skip annotation, each trimmed as Go's strings.TrimSpace trims.

    Empty entries are kept, as the reference keeps them: `"sidecar;"` also skips containers that have no name (the
    API server never admits one, but `mutate` and `check` may be given one).
    """
    raw = annotations.get(SKIP_CONTAINERS_ANNOTATION, "")
    if not raw:
        return frozenset()
    return frozenset(name.strip(GO_SPACE) for name in raw.split(";"))

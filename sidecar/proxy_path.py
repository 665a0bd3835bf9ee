"""The path the shipped Envoy forwards, for `check --http`: what a request file's target becomes before we are asked.

deploy/envoy/*.yaml turn on `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action:
REJECT_REQUEST`, so the sidecar (and the upstream) never see `/public/../admin` but `/admin`. `check` must judge
the same path or it would refuse, offline, a request Envoy turns into an allowed one (and the other way round).

The rules below are Envoy 1.40's observed behaviour, not a copy of its code: tests/e2e/test_check_parity_e2e.py
sends every case of a corpus (hand-picked and generated) through a real Envoy and compares the path the upstream
receives, or Envoy's own 400, with `envoy_path`'s answer.
"""

from __future__ import annotations

import re
import string

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
"""Escapes of these characters are decoded (`%7E` -> `~`, `%2e` -> `.`); every other escape is kept as written."""
_ESCAPED = frozenset('"<>`{}|^')
"""Raw characters Envoy escapes (upper-case hex) on the way."""
_HEX = frozenset(string.hexdigits)
_DOT_THEN_PARAMETER = re.compile(r"\.\.?;")
"""A segment of raw dots followed by `;` (`..;x`) counts as a dot segment, its `;...` dropped."""


class ProxyRejects(ValueError):
    """The shipped Envoy answers this request itself with a 400: the sidecar is never asked."""


def envoy_path(target: str) -> str:
    """The `:path` Envoy, as shipped, sends for the request target `target`; raises `ProxyRejects` when it answers
    400 itself (a fragment, an escaped slash or NUL, a raw byte its HTTP/1 codec refuses)."""
    if "#" in target:
        raise ProxyRejects("the target carries a fragment ('#')")
    path, sep, query = target.partition("?")
    if any(ch <= " " or ch >= "\x7f" for ch in target):
        raise ProxyRejects("the target holds a space, a control or a non-ASCII byte")
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise ProxyRejects("the path holds an escaped slash (%2F or %5C): path_with_escaped_slashes_action")
    if "%00" in path:
        raise ProxyRejects("the path holds an escaped NUL (%00)")
    if not path.startswith("/"):
        return target  # `*` or an authority form: nothing to normalize (the adapter refuses them)
    return _merge_slashes(_normalize(path)) + sep + query


def _normalize(path: str) -> str:
    """`normalize_path`: backslashes are slashes, unreserved escapes decoded, dot segments removed (a `..` above
    the root stays at the root); empty segments are kept here (merging them is `merge_slashes`' job)."""
    kept: list[str] = []
    trailing = False
    for raw in path.replace("\\", "/").split("/")[1:]:
        segment = _canonical_segment(raw)
        if segment in (".", "..") or _DOT_THEN_PARAMETER.match(raw):
            if segment.startswith("..") and kept:
                kept.pop()
            trailing = True
            continue
        kept.append(segment)
        trailing = False
    return "/" + "/".join(kept) + ("/" if trailing and kept else "")


def _canonical_segment(segment: str) -> str:
    out: list[str] = []
    index, size = 0, len(segment)
    while index < size:
        ch = segment[index]
        if ch == "%" and index + 2 < size and segment[index + 1] in _HEX and segment[index + 2] in _HEX:
            decoded = chr(int(segment[index + 1 : index + 3], 16))
            out.append(decoded if decoded in _UNRESERVED else segment[index : index + 3])
            index += 3
            continue
        out.append(f"%{ord(ch):02X}" if ch in _ESCAPED else ch)
        index += 1
    return "".join(out)


def _merge_slashes(path: str) -> str:
    """`merge_slashes`: runs of `/` become one, a leading and a trailing slash are kept (`///` becomes `//`, which
    the sidecar then refuses as an empty segment, as it does behind Envoy)."""
    if "//" not in path:
        return path
    inner = "/".join(part for part in path.split("/") if part)
    return ("/" if path.startswith("/") else "") + inner + ("/" if path.endswith("/") else "")

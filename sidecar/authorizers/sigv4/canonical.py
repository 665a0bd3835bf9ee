"""Rebuilding a SigV4 canonical request from what Envoy forwards, and parsing the signature parameters.

Everything here is pure string work with no I/O and no knowledge of credentials, so it can be tested against the
AWS suites directly. The rules (AWS "Create a canonical request" documentation):

- **Path.** Envoy forwards the path exactly as the client sent it (percent-encoded once, with the query). Services
  other than S3 remove dot segments and empty segments (`normalize`) and then URI-encode that wire path *again*
  (`double_encode`): `/a b` travels as `/a%20b` and is signed as `/a%2520b`. S3 does neither; its canonical path
  is the wire path with each segment's encoding made canonical (decode, then encode every byte that is not
  RFC 3986 unreserved, with upper-case hex).
- **Query.** Each `key=value` pair is decoded and re-encoded the RFC 3986 way (`+` is a literal plus, not a
  space), then sorted by encoded key and, for repeated keys, by encoded value. A presigned URL's own
  `X-Amz-Signature` is left out.
- **Headers.** Only the signed ones, in SignedHeaders order (which must be lower-case, sorted, unique); values are
  trimmed and inner runs of whitespace collapse to one space. Repeated headers arrive already joined with `,`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote, unquote, unquote_to_bytes

HMAC_ALGORITHM = "AWS4-HMAC-SHA256"
ECDSA_ALGORITHM = "AWS4-ECDSA-P256-SHA256"
ALGORITHMS = frozenset({HMAC_ALGORITHM, ECDSA_ALGORITHM})
TERMINATOR = "aws4_request"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]*\Z")
_SAFE_PATH = re.compile(r"[A-Za-z0-9\-._~/]*\Z")
_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z\Z")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+\-.^_`|~]+\Z")
_SCOPE_DATE = re.compile(r"\d{8}\Z")
_MAX_AUTHORIZATION = 8192
_MAX_SIGNED_HEADERS = 64


class MalformedSignature(ValueError):
    """The Authorization header or presigned query is not a well-formed SigV4 signature (IncompleteSignature)."""


class SignatureParams(NamedTuple):
    """The parts of a SigV4/SigV4a signature, whether it came in the Authorization header or in the query.

    A NamedTuple, built positionally from a remembered template (`_build`): one is built for every signed
    request, and a frozen dataclass costs several times as much to build.
    """

    algorithm: str
    access_key_id: str
    scope: str
    """The credential scope: `date/region/service/aws4_request` (SigV4) or `date/service/aws4_request` (SigV4a)."""
    scope_date: str
    scope_region: str
    """Empty for SigV4a: its regions travel in X-Amz-Region-Set."""
    scope_service: str
    scope_terminator: str
    signed_headers: tuple[str, ...]
    signed_headers_text: str
    signature: str
    presigned: bool = False
    amz_date: str = ""
    """Presigned only: X-Amz-Date. The header form takes its date from the X-Amz-Date / Date header."""
    expires: str = ""
    security_token: str | None = None
    region_set: str | None = None


def remove_dot_segments(path: str) -> str:
    """Drop `.`, `..` and empty segments the way AWS's non-S3 services do (`/a//./b/../c/` -> `/a/c/`)."""
    if not path:
        return "/"
    out: list[str] = []
    for segment in path.split("/"):
        if not segment or segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
        else:
            out.append(segment)
    lead = "/" if path[0] == "/" else ""
    trail = "/" if path[-1] == "/" and out else ""
    return lead + "/".join(out) + trail


def canonical_path(path: str, *, normalize: bool, double_encode: bool) -> str:
    """The CanonicalURI line for a wire path (no query), per the module docstring."""
    if not path:
        path = "/"
    if normalize:
        path = remove_dot_segments(path)
    if double_encode:
        return path if _SAFE_PATH.match(path) else quote(path, safe="/")
    if _SAFE_PATH.match(path):
        return path
    return "/".join(quote(unquote_to_bytes(segment), safe="") for segment in path.split("/"))


def _canonical_component(text: str) -> str:
    if _UNRESERVED.match(text):
        return text
    return quote(unquote_to_bytes(text), safe="")


def remembered_path(path: str, normalize: bool, double_encode: bool) -> str:
    """`canonical_path`, remembered for paths up to `_MEMO_CHARS` long: a client signs the same few paths again
    and again, and normalizing and re-encoding one costs more than looking it up."""
    if len(path) > _MEMO_CHARS:
        return canonical_path(path, normalize=normalize, double_encode=double_encode)
    return _remembered_path(path, normalize, double_encode)


def remembered_query(query: str) -> str:
    """`canonical_query` of a header-signed request's query, remembered like `remembered_path` (a presigned URL's
    query holds its signature, different every time: do not use this for those)."""
    if len(query) > _MEMO_CHARS:
        return canonical_query(query)
    return _remembered_query(query)


_MEMO_CHARS = 1024
"""Longer paths and queries are not remembered, so the memos stay small (at most ~2 MB each)."""


@lru_cache(maxsize=1024)
def _remembered_path(path: str, normalize: bool, double_encode: bool) -> str:
    return canonical_path(path, normalize=normalize, double_encode=double_encode)


@lru_cache(maxsize=1024)
def _remembered_query(query: str) -> str:
    return canonical_query(query)


def canonical_query(query: str, *, drop_signature: bool = False, drop_token: bool = False) -> str:
    """The CanonicalQueryString line for a raw (still encoded) query string.

    `drop_signature` leaves out a presigned URL's X-Amz-Signature; `drop_token` also leaves out
    X-Amz-Security-Token, for clients that append the session token after signing.
    """
    if not query:
        return ""
    pairs: list[tuple[str, str]] = []
    for piece in query.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        # Compare the raw key, as `query_auth_params` read it: an encoded look-alike (`X%2DAmz-Signature`)
        # stays in the canonical query, so it cannot ride along unsigned.
        if drop_signature and (key == "X-Amz-Signature" or (drop_token and key == "X-Amz-Security-Token")):
            continue
        pairs.append((_canonical_component(key), _canonical_component(value)))
    pairs.sort()
    return "&".join([f"{key}={value}" for key, value in pairs])


def query_auth_params(query: str) -> dict[str, list[str]]:
    """The decoded `X-Amz-*` parameters of a query string (a list per name, to detect repeats)."""
    found: dict[str, list[str]] = {}
    for piece in query.split("&"):
        if not piece.startswith("X-Amz-"):
            continue
        key, _, value = piece.partition("=")
        try:
            found.setdefault(key, []).append(unquote(value, errors="strict"))
        except UnicodeDecodeError:
            raise MalformedSignature(f"Query parameter {key} is not valid UTF-8") from None
    return found


def canonical_header_value(value: str) -> str:
    """Trim, and collapse inner runs of whitespace (including obs-folds) to one space."""
    return " ".join(value.split())


def canonical_headers(headers: Mapping[str, str], signed: tuple[str, ...]) -> str:
    """The CanonicalHeaders block (each line `name:value\\n`); KeyError names a signed header that is absent."""
    return "".join([f"{name}:{' '.join(headers[name].split())}\n" for name in signed])


def canonical_request(
    method: str, uri: str, query: str, headers_block: str, signed_headers_text: str, payload_hash: str
) -> str:
    """The canonical request text whose SHA-256 goes into the string to sign."""
    return f"{method}\n{uri}\n{query}\n{headers_block}\n{signed_headers_text}\n{payload_hash}"


def string_to_sign(algorithm: str, amz_date: str, scope: str, canonical_request_hash: str) -> str:
    """The string to sign, for both algorithms."""
    return f"{algorithm}\n{amz_date}\n{scope}\n{canonical_request_hash}"


@lru_cache(maxsize=256)
def parse_amz_date(value: str) -> float:
    """Epoch seconds of an ISO 8601 basic timestamp (`20150830T123600Z`); MalformedSignature if it is not one."""
    match = _AMZ_DATE.match(value)
    if match is None:
        raise MalformedSignature("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
    except ValueError:
        raise MalformedSignature("X-Amz-Date is not a valid date") from None


def parse_http_date(value: str) -> tuple[float, str]:
    """Epoch seconds and the ISO 8601 basic form of an HTTP `Date` header (used when X-Amz-Date is absent)."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        raise MalformedSignature("Date header is not a valid HTTP date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    return parsed.timestamp(), parsed.strftime("%Y%m%dT%H%M%SZ")


def _split_credential(credential: str, algorithm: str) -> tuple[str, str, str, str, str, str]:
    """`akid/date/region/service/aws4_request` (SigV4) or `akid/date/service/aws4_request` (SigV4a)."""
    parts = credential.split("/")
    want = 5 if algorithm == HMAC_ALGORITHM else 4
    if len(parts) != want or not all(parts):
        shape = "keyid/date/region/service/aws4_request" if want == 5 else "keyid/date/service/aws4_request"
        raise MalformedSignature(f"Credential must have {want} slash-separated elements: {shape}")
    access_key_id, date = parts[0], parts[1]
    region = parts[2] if want == 5 else ""
    service, terminator = parts[-2], parts[-1]
    if any(ch.isspace() for ch in access_key_id) or len(access_key_id) > 128:
        raise MalformedSignature("Credential has an invalid access key id")
    if not _SCOPE_DATE.match(date):
        raise MalformedSignature("Credential date must be yyyyMMdd")
    return access_key_id, "/".join(parts[1:]), date, region, service, terminator


def _split_signed_headers(text: str) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if len(names) > _MAX_SIGNED_HEADERS:
        raise MalformedSignature("SignedHeaders lists too many headers")
    for name in names:
        if not _HEADER_NAME.match(name):
            raise MalformedSignature("SignedHeaders must be lower-case header names separated by ';'")
    if any(a >= b for a, b in itertools.pairwise(names)):
        raise MalformedSignature("SignedHeaders must be sorted and unique")
    return names


def _build(
    algorithm: str,
    credential: str,
    signed_headers: str,
    signature: str,
    presigned: bool = False,
    amz_date: str = "",
    expires: str = "",
    security_token: str | None = None,
    region_set: str | None = None,
) -> SignatureParams:
    """The parsed signature. Everything but the signature itself repeats from one request to the next of the same
    client (key, scope, signed header list), so that part is parsed once and remembered (bounded: a flood of
    made-up credentials only restarts the table)."""
    key = (algorithm, credential, signed_headers)
    template = _TEMPLATES.get(key)
    if template is None:
        akid, scope, date, region, service, terminator = _split_credential(credential, algorithm)
        names = _split_signed_headers(signed_headers)
        template = SignatureParams(algorithm, akid, scope, date, region, service, terminator, names, signed_headers, "")
        if len(credential) + len(signed_headers) <= _MEMO_CHARS:  # a long made-up one is parsed every time
            if len(_TEMPLATES) >= _MAX_TEMPLATES:
                _TEMPLATES.clear()
            _TEMPLATES[key] = template
    if not presigned:
        return SignatureParams(*template[:9], signature)
    return SignatureParams(*template[:9], signature, True, amz_date, expires, security_token, region_set)


_TEMPLATES: dict[tuple[str, str, str], SignatureParams] = {}
_MAX_TEMPLATES = 1024


_HEADER_PARTS = ("Credential", "SignedHeaders", "Signature")


def parse_authorization(value: str) -> SignatureParams:
    """Parse `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...` (or the ECDSA algorithm)."""
    if len(value) > _MAX_AUTHORIZATION:
        raise MalformedSignature("Authorization header is too long")
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm not in ALGORITHMS:
        raise MalformedSignature(f"Authorization header must use {HMAC_ALGORITHM} or {ECDSA_ALGORITHM}")
    found: dict[str, str] = {}
    for item in rest.split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, val = item.partition("=")
        if not eq or name not in _HEADER_PARTS:
            raise MalformedSignature(
                "Authorization header has an unexpected element; expected Credential, SignedHeaders and Signature"
            )
        if name in found:
            raise MalformedSignature(f"Authorization header repeats '{name}'")
        found[name] = val.strip()
    missing = [name for name in _HEADER_PARTS if not found.get(name)]
    if missing:
        raise MalformedSignature(" ".join(f"Authorization header requires '{name}' parameter." for name in missing))
    return _build(algorithm, found["Credential"], found["SignedHeaders"], found["Signature"])


_QUERY_REQUIRED = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
_QUERY_OPTIONAL = ("X-Amz-Security-Token", "X-Amz-Region-Set")


def parse_presigned(params: Mapping[str, list[str]]) -> SignatureParams:
    """Parse the `X-Amz-*` query parameters of a presigned URL (as returned by `query_auth_params`)."""
    single: dict[str, str] = {}
    for name in (*_QUERY_REQUIRED, *_QUERY_OPTIONAL):
        values = params.get(name)
        if values is None:
            continue
        if len(values) != 1:
            raise MalformedSignature(f"Query parameter {name} appears more than once")
        single[name] = values[0]
    if any(not single.get(name) for name in _QUERY_REQUIRED):
        raise MalformedSignature(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
            "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
        )
    algorithm = single["X-Amz-Algorithm"]
    if algorithm not in ALGORITHMS:
        raise MalformedSignature(f"X-Amz-Algorithm must be {HMAC_ALGORITHM} or {ECDSA_ALGORITHM}")
    return _build(
        algorithm,
        single["X-Amz-Credential"],
        single["X-Amz-SignedHeaders"],
        single["X-Amz-Signature"],
        presigned=True,
        amz_date=single["X-Amz-Date"],
        expires=single["X-Amz-Expires"],
        security_token=single.get("X-Amz-Security-Token"),
        region_set=single.get("X-Amz-Region-Set"),
    )

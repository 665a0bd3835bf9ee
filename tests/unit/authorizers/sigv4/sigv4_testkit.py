"""Shared helpers for the SigV4 tests: reading the AWS suites and building Requests the way Envoy delivers them."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sidecar.authorizers.sigv4.credentials import Credential, StaticCredentialStore, principal_details
from sidecar.authorizers.sigv4.verifier import SigV4Verifier, VerifierOptions
from sidecar.request import Request

DATA = Path(__file__).resolve().parents[3] / "data" / "sigv4"
CLASSIC = DATA / "classic"
CRT = DATA / "aws-signing-test-suite"

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
VECTOR_TIME = datetime.fromisoformat("2015-08-30T12:36:00+00:00").timestamp()
ARN = "arn:aws:iam::123456789012:user/alice"

# Characters that may travel unencoded in a request target (RFC 3986 pchar / query, plus an existing `%`).
_WIRE_SAFE = "!$&'()*+,;=:@/?-._~%"


def to_wire(text: str) -> str:
    """How a client puts `text` (written unencoded in a vector) on the wire: encode only what must be encoded."""
    return quote(text, safe=_WIRE_SAFE)


@dataclass
class HttpMessage:
    """A request file parsed: method, target, headers in order (name as written), body."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


def parse_http(text: str) -> HttpMessage:
    """Parse a vector's request file. Continuation lines (obs-fold) join the previous value with a space."""
    head, sep, body = text.partition("\n\n")
    lines = head.split("\n")
    request_line = lines[0].split(" ")
    method, target = request_line[0], " ".join(request_line[1:-1])
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line}")
            continue
        name, _, value = line.partition(":")
        headers.append((name, value))
    payload = body.rstrip("\n") if sep else ""
    return HttpMessage(method, target, headers, payload.encode())


def envoy_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Headers as Envoy's CheckRequest carries them: lower-case names, OWS trimmed, repeats joined with ','."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.strip().lower()
        value = value.strip(" \t")
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def envoy_request(
    message: HttpMessage, *, wire_target: str | None = None, at: float = VECTOR_TIME, body: bytes | None = None
) -> Request:
    """The `Request` the sidecar receives for `message` (with `wire_target` overriding the request target)."""
    target = wire_target if wire_target is not None else message.target
    headers = envoy_headers(message.headers)
    return Request(
        method=message.method,
        raw_path=target,
        path=target.partition("?")[0],
        headers=headers,
        host=headers.get("host", ""),
        body=message.body if body is None else body,
        time=at,
    )


def credential(
    access_key_id: str = AKID,
    secret: str = SECRET,
    *,
    token: str | None = None,
    arn: str = ARN,
    expires_at: float | None = None,
    enabled: bool = True,
    policies: tuple[Mapping[str, Any], ...] = (),
) -> Credential:
    account, principal_type, user_id, username = principal_details(arn)
    return Credential(
        access_key_id=access_key_id,
        secret_access_key=secret,
        principal_arn=arn,
        account=account,
        principal_type=principal_type,
        user_id=user_id or access_key_id,
        username=username,
        session_token=token,
        expires_at=expires_at,
        enabled=enabled,
        policies=policies,
    )


def verifier(
    credentials: Sequence[Credential] = (),
    *,
    service: str = "service",
    regions: Sequence[str] = ("us-east-1",),
    **options: Any,
) -> SigV4Verifier:
    creds = list(credentials) or [credential()]
    opts = VerifierOptions(service=service, regions=frozenset(regions), **options)
    return SigV4Verifier(StaticCredentialStore(creds), opts)


@dataclass
class Case:
    """One signed request from a suite, with what it takes to verify it."""

    suite: str
    name: str
    form: str  # "header" | "query"
    signed: HttpMessage
    normalize: bool
    expected_creq: str | None
    token: str | None = None
    access_key_id: str = AKID
    secret: str = SECRET
    region: str = "us-east-1"
    service: str = "service"
    at: float = VECTOR_TIME
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}/{self.form}"

    def with_signed(self, signed: HttpMessage) -> Case:
        return replace(self, signed=signed)


def _crt_context(case_dir: Path) -> dict[str, Any]:
    return json.loads((case_dir / "context.json").read_text())  # type: ignore[no-any-return]


def crt_cases(variant: str) -> Iterator[Case]:
    """Every complete case of `aws-signing-test-suite/<variant>`, header and query forms."""
    for case_dir in sorted(p for p in (CRT / variant).iterdir() if p.is_dir()):
        if not (case_dir / "header-signed-request.txt").exists():
            continue
        ctx = _crt_context(case_dir)
        creds = ctx["credentials"]
        for form in ("header", "query"):
            yield Case(
                suite=f"crt-{variant}",
                name=case_dir.name,
                form=form,
                signed=parse_http((case_dir / f"{form}-signed-request.txt").read_text()),
                normalize=bool(ctx.get("normalize", True)),
                expected_creq=(case_dir / f"{form}-canonical-request.txt").read_text(),
                token=creds.get("token"),
                access_key_id=creds["access_key_id"],
                secret=creds["secret_access_key"],
                region=ctx["region"],
                service=ctx["service"],
                at=datetime.fromisoformat(ctx["timestamp"].replace("Z", "+00:00")).timestamp(),
            )


def classic_cases() -> Iterator[Case]:
    """Every case of the classic suite (header form only: that suite has no presigned variants)."""
    session_token = _crt_context(CRT / "v4" / "get-vanilla-with-session-token")["credentials"]["token"]
    for sreq in sorted(CLASSIC.rglob("*.sreq")):
        name = sreq.stem
        signed = parse_http(sreq.read_text())
        authz = sreq.with_suffix(".authz").read_text()
        # The .authz is authoritative: one upstream .sreq carries another case's signature (see SOURCES.md).
        signed.headers = [(n, v) for n, v in signed.headers if n.lower() != "authorization"]
        signed.headers.append(("Authorization", authz))
        token = None
        if name == "get-vanilla-with-session-token" and "X-Amz-Security-Token" not in dict(signed.headers):
            signed.headers.append(("X-Amz-Security-Token", session_token))
            token = session_token
        for n, v in signed.headers:
            if n.lower() == "x-amz-security-token":
                token = v
        yield Case(
            suite="classic",
            name=name,
            form="header",
            signed=signed,
            normalize=True,
            expected_creq=sreq.with_suffix(".creq").read_text(),
            token=token,
        )


def self_sign(
    method: str,
    target: str,
    headers: Mapping[str, str],
    *,
    body: bytes = b"",
    at: float = VECTOR_TIME,
    access_key_id: str = AKID,
    secret: str = SECRET,
    region: str = "us-east-1",
    service: str = "service",
    algorithm: str = "AWS4-HMAC-SHA256",
    signed: Sequence[str] | None = None,
    amz_date: str | None = None,
) -> Request:
    """Sign a header-form request with this package's own canonicalization (for paths botocore cannot take, such
    as a `Date` header or SigV4a region sets). Correctness of that canonicalization is established separately by
    the AWS suites and botocore; these tests exercise the checks around it."""
    import hashlib
    import hmac

    from sidecar.authorizers.sigv4 import sigv4a
    from sidecar.authorizers.sigv4.canonical import canonical_headers, canonical_path, canonical_query
    from sidecar.authorizers.sigv4.credentials import derive_signing_key

    stamp = amz_date or datetime.fromtimestamp(at, UTC).strftime("%Y%m%dT%H%M%SZ")
    all_headers = {k.lower(): v for k, v in headers.items()}
    all_headers.setdefault("host", "example.amazonaws.com")
    if "date" not in all_headers:
        all_headers.setdefault("x-amz-date", stamp)
    names = tuple(sorted(signed if signed is not None else all_headers))
    path, _, query = target.partition("?")
    payload = hashlib.sha256(body).hexdigest()
    creq = "\n".join(
        [
            method,
            canonical_path(path, normalize=True, double_encode=True),
            canonical_query(query),
            canonical_headers(all_headers, names),
            ";".join(names),
            payload,
        ]
    )
    date = stamp[:8]
    scope = (
        f"{date}/{region}/{service}/aws4_request"
        if algorithm == "AWS4-HMAC-SHA256"
        else (f"{date}/{service}/aws4_request")
    )
    sts = f"{algorithm}\n{stamp}\n{scope}\n{hashlib.sha256(creq.encode()).hexdigest()}".encode()
    if algorithm == "AWS4-HMAC-SHA256":
        key = derive_signing_key(secret, date, region, service)
        signature = hmac.new(key, sts, hashlib.sha256).hexdigest()
    else:
        signature = sigv4a.sign(sigv4a.derive_private_key(access_key_id, secret), sts)
    all_headers["authorization"] = (
        f"{algorithm} Credential={access_key_id}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return Request(method, target, path, all_headers, host=all_headers["host"], body=body, time=at)

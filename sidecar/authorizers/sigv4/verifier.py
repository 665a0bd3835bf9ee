"""Checking one request's SigV4 / SigV4a signature: pure and synchronous, no I/O (the authorizer wraps it).

The canonical request is rebuilt from what Envoy forwards (`canonical.py`) and the signature checked against a key
from the credential snapshot (`credentials.py`). Hot path cost is one canonical request, one SHA-256 and one HMAC:
signing keys are derived once per (access key, date, region, service) and kept with the credential snapshot,
SigV4a public keys once per access key. Failures are `Denied` with the AWS error names and texts that API Gateway
users know (`IncompleteSignature`, `InvalidSignature`, ...), all 403 by default as API Gateway sends them.

Each refusal carries an explainer (`Denied.explain`) that `check --explain` calls to say what was checked and
found; for a signature that does not match, it is the canonical request and string to sign the sidecar computed,
worded as AWS's own SignatureDoesNotMatch error words them, so a client can diff them with its own. Only
`check --explain` ever calls it: the deny the client receives and the decision log carry the message alone.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from ...explanation import Explainer, Fact, Step, listed, refused, shown_value, when
from ...reasons import MISSING_AUTHENTICATION_TOKEN, Denied
from ...request import Request
from . import sigv4a
from .canonical import (
    ECDSA_ALGORITHM,
    EMPTY_SHA256,
    HMAC_ALGORITHM,
    TERMINATOR,
    UNSIGNED_PAYLOAD,
    MalformedSignature,
    SignatureParams,
    canonical_headers,
    canonical_query,
    parse_amz_date,
    parse_authorization,
    parse_http_date,
    parse_presigned,
    query_auth_params,
    remembered_path,
    remembered_query,
)
from .credentials import Credential, CredentialSet, CredentialStore
from .errors import (
    CONTENT_SHA256_MISMATCH,
    EXPIRED_TOKEN,
    INCOMPLETE_SIGNATURE,
    INVALID_CLIENT_TOKEN_ID,
    INVALID_SIGNATURE,
    PARTIAL_BODY,
    REQUEST_TIME_TOO_SKEWED,
    SIGNATURE_EXPIRED,
    UNRECOGNIZED_CLIENT,
    UNSIGNED_PAYLOAD_NOT_ALLOWED,
)

MSG_MISSING = "Missing Authentication Token"
MSG_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
MSG_BAD_TOKEN = "The security token included in the request is invalid."
MSG_EXPIRED_TOKEN = "The security token included in the request is expired"

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
_NO_TOKEN = "no session token (X-Amz-Security-Token), which this credential requires"
_OTHER_TOKEN = "a session token that is not this credential's (its value is never shown)"
MAX_EXPIRES = 604800
_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")
_DIGITS = re.compile(r"\d{1,7}\Z")


@dataclass(frozen=True, slots=True)
class VerifierOptions:
    """The compiled, hot-path form of `SigV4Settings` (`SigV4Settings.verifier_options`)."""

    service: str
    regions: frozenset[str]
    normalize_path: bool = True
    double_encode: bool = True
    clock_skew: float = 300.0
    allow_unsigned_payload: bool = False
    max_expires: int = MAX_EXPIRES
    algorithms: frozenset[str] = frozenset({HMAC_ALGORITHM, ECDSA_ALGORITHM})
    require_signed_session_token: bool = False
    deny_status: int = 403


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out: who signed it, and how long its signature stays replayable."""

    credential: Credential
    snapshot: CredentialSet
    params: SignatureParams
    replay_key: str
    replay_ttl: float
    now: float
    unsigned_token: bool = False
    """The presigned URL's session token was appended after signing (not covered by the signature)."""


Facts = Callable[[], tuple[Fact, ...]]
"""What a refusal found, computed only when explained (`check --explain`): a refusal on the hot path formats
nothing."""


def _explained(reason: str, message: str, facts: Facts) -> Step:
    return refused(reason, message, *facts())


def _looked_for() -> tuple[Fact, ...]:
    return (
        ("looked_for", "an Authorization header (AWS4-HMAC-SHA256 / AWS4-ECDSA-P256-SHA256 Credential=...)"),
        ("or", "presigned query parameters (X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, ...)"),
    )


def _found(access_key_id: str, found: str) -> tuple[Fact, ...]:
    return (("access_key_id", shown_value(access_key_id)), ("found", found))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%dT%H%M%SZ")


class SigV4Verifier:
    """Checks one request's SigV4/SigV4a signature. Pure and synchronous: `authenticate` wraps it."""

    def __init__(self, store: CredentialStore, options: VerifierOptions) -> None:
        self.store = store
        self.options = options
        self._regions = tuple(sorted(options.regions))

    # -- errors ------------------------------------------------------------------------------------------------

    def _deny(self, reason: str, message: str, status: int | None = None, facts: Facts | None = None) -> Denied:
        """A refusal; `facts` (what was checked and found, computed only when called) become its explanation
        under `check --explain`."""
        explain: Explainer | None = partial(_explained, reason, message, facts) if facts is not None else None
        return Denied(reason, message, status or self.options.deny_status, explain=explain)

    # -- the steps ---------------------------------------------------------------------------------------------

    def _signature_params(self, request: Request, query: str) -> SignatureParams:
        authorization = request.headers.get("authorization", "").strip()
        presigned = "X-Amz-" in query and "X-Amz-Algorithm=" in query
        if authorization:
            if presigned:
                raise self._deny(
                    INCOMPLETE_SIGNATURE,
                    "Only one auth mechanism allowed; only the X-Amz-Algorithm "
                    "query parameter or the Authorization header should be specified",
                )
            return parse_authorization(authorization)
        if presigned:
            return parse_presigned(query_auth_params(query))
        if "X-Amz-Signature=" in query or "X-Amz-Credential=" in query:
            raise MalformedSignature("Query-string authentication requires the X-Amz-Algorithm parameter")
        raise self._deny(
            MISSING_AUTHENTICATION_TOKEN,
            MSG_MISSING,
            None,
            _looked_for,
        )

    def _request_date(self, request: Request, params: SignatureParams) -> tuple[str, float]:
        """(ISO basic timestamp for the string to sign, epoch seconds) of the signing time."""
        if params.presigned:
            return params.amz_date, parse_amz_date(params.amz_date)
        amz_date = request.headers.get("x-amz-date")
        if amz_date is not None:
            if "x-amz-date" not in params.signed_headers:
                raise MalformedSignature("'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.")
            amz_date = amz_date.strip()
            return amz_date, parse_amz_date(amz_date)
        http_date = request.headers.get("date")
        if http_date is None:
            raise MalformedSignature(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
            )
        if "date" not in params.signed_headers:
            raise MalformedSignature("'Date' must be a 'SignedHeader' in the AWS Authorization.")
        epoch, iso = parse_http_date(http_date)
        return iso, epoch

    def _check_scope(self, request: Request, params: SignatureParams, amz_date: str) -> str:
        """Scope checks; returns the X-Amz-Region-Set (SigV4a) or ''."""
        opts = self.options
        if params.algorithm not in opts.algorithms:
            raise MalformedSignature(f"Signing algorithm {params.algorithm} is not accepted here")
        if "host" not in params.signed_headers:
            raise MalformedSignature("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
        if params.scope_date != amz_date[:8]:
            raise self._scope_denied(
                params,
                amz_date,
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.",
            )
        if params.scope_terminator != TERMINATOR:
            raise self._scope_denied(
                params, amz_date, f"Credential should be scoped with a valid terminator: '{TERMINATOR}'."
            )
        if params.scope_service != opts.service:
            raise self._scope_denied(
                params, amz_date, f"Credential should be scoped to correct service: '{opts.service}'."
            )
        if params.algorithm == HMAC_ALGORITHM:
            if params.scope_region not in opts.regions:
                raise self._scope_denied(params, amz_date, "Credential should be scoped to a valid region.")
            return ""
        region_set = params.region_set if params.presigned else request.headers.get("x-amz-region-set")
        if not region_set:
            raise MalformedSignature("SigV4a requires the X-Amz-Region-Set header or query parameter")
        if not params.presigned and "x-amz-region-set" not in params.signed_headers:
            raise MalformedSignature("'X-Amz-Region-Set' must be a 'SignedHeader' in the AWS Authorization.")
        if not sigv4a.region_set_matches(region_set, self._regions):
            raise self._scope_denied(
                params,
                amz_date,
                "X-Amz-Region-Set does not include a region this API serves.",
                region_set,
            )
        return region_set

    def _scope_denied(self, params: SignatureParams, amz_date: str, message: str, region_set: str = "") -> Denied:
        """A credential scope this API does not serve: the scope presented beside what is expected."""

        def facts() -> tuple[Fact, ...]:
            found = (("region_set", shown_value(region_set)),) if region_set else ()
            return (
                ("credential_scope", shown_value(params.scope)),
                ("request_date", shown_value(amz_date)),
                ("expected_service", self.options.service),
                ("expected_regions", listed(self._regions)),
                *found,
            )

        return self._deny(INVALID_SIGNATURE, message, None, facts)

    def _check_time(self, params: SignatureParams, signed_at: float, now: float) -> float:
        """Clock-skew and expiry checks; returns how long the signature stays valid from `now` (the replay TTL)."""
        skew = self.options.clock_skew
        if signed_at - now > skew:
            raise self._deny(
                REQUEST_TIME_TOO_SKEWED,
                f"Signature not yet current: {_iso(signed_at)} is still later "
                f"than {_iso(now + skew)} ({_iso(now)} + {skew / 60:g} min.)",
                None,
                partial(_times, signed_at, now, skew),
            )
        if not params.presigned:
            if now - signed_at > skew:
                raise self._deny(
                    SIGNATURE_EXPIRED,
                    f"Signature expired: {_iso(signed_at)} is now earlier than "
                    f"{_iso(now - skew)} ({_iso(now)} - {skew / 60:g} min.)",
                    None,
                    partial(_times, signed_at, now, skew),
                )
            return signed_at + skew - now
        if not _DIGITS.match(params.expires):
            raise MalformedSignature("X-Amz-Expires must be a whole number of seconds")
        expires = int(params.expires)
        if expires < 1 or expires > self.options.max_expires:
            raise MalformedSignature(f"X-Amz-Expires must be between 1 and {self.options.max_expires} seconds")
        if now > signed_at + expires:
            raise self._deny(
                SIGNATURE_EXPIRED,
                f"Signature expired: the presigned URL expired at {_iso(signed_at + expires)}",
                None,
                lambda: (*_times(signed_at, now, skew)[:2], ("expires", f"{expires} s (X-Amz-Expires)")),
            )
        return signed_at + expires - now

    def _credential(self, request: Request, params: SignatureParams, now: float) -> tuple[Credential, CredentialSet]:
        snapshot = self.store.current
        credential = snapshot.get(params.access_key_id)
        key = params.access_key_id
        if credential is None:
            raise self._deny(
                UNRECOGNIZED_CLIENT, MSG_BAD_TOKEN, None, partial(_found, key, "no credential with this key")
            )
        if not credential.enabled:
            raise self._deny(
                INVALID_CLIENT_TOKEN_ID, MSG_BAD_TOKEN, None, partial(_found, key, "the credential is disabled")
            )
        expires_at = credential.expires_at
        if expires_at is not None and now >= expires_at:
            raise self._deny(
                EXPIRED_TOKEN,
                MSG_EXPIRED_TOKEN,
                None,
                lambda: _found(key, f"the credential expired at {when(expires_at)}; judged at {when(now)}"),
            )
        token = params.security_token if params.presigned else request.headers.get("x-amz-security-token")
        if credential.session_token is None:
            if token is not None:
                raise self._deny(
                    INVALID_CLIENT_TOKEN_ID,
                    MSG_BAD_TOKEN,
                    None,
                    partial(_found, key, "a session token (X-Amz-Security-Token) for a credential that has none"),
                )
        else:
            if token is None or not hmac.compare_digest(
                token.encode("utf-8", "surrogatepass"), credential.session_token.encode()
            ):
                found = _NO_TOKEN if token is None else _OTHER_TOKEN
                raise self._deny(INVALID_CLIENT_TOKEN_ID, MSG_BAD_TOKEN, None, partial(_found, key, found))
            if (
                self.options.require_signed_session_token
                and not params.presigned
                and "x-amz-security-token" not in params.signed_headers
            ):
                raise MalformedSignature("'X-Amz-Security-Token' must be a 'SignedHeader' in the AWS Authorization.")
        return credential, snapshot

    def _payload_hash(self, request: Request) -> str:
        declared = request.headers.get("x-amz-content-sha256")
        cut_short = request.headers.get(PARTIAL_BODY_HEADER, "").lower() == "true"
        if declared is not None:
            if declared == UNSIGNED_PAYLOAD:
                if not self.options.allow_unsigned_payload:
                    raise self._deny(
                        UNSIGNED_PAYLOAD_NOT_ALLOWED,
                        "This API requires signed payloads; x-amz-content-sha256: UNSIGNED-PAYLOAD is not accepted.",
                    )
                return UNSIGNED_PAYLOAD
            if not _HEX64.match(declared):
                raise MalformedSignature("x-amz-content-sha256 must be UNSIGNED-PAYLOAD or a SHA-256 hex digest")
        if cut_short:
            raise self._deny(
                PARTIAL_BODY,
                "The request body was too large to verify its signature.",
                413,
                lambda: (
                    ("body_bytes_received", str(len(request.body))),
                    (
                        "found",
                        f"the proxy cut the body short ({PARTIAL_BODY_HEADER}: true): raise its max_request_bytes",
                    ),
                ),
            )
        body = request.body
        actual = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        if declared is not None and declared.lower() != actual:
            raise self._deny(
                CONTENT_SHA256_MISMATCH,
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                400,
                lambda: (("declared", shown_value(declared)), ("computed", actual), ("body_bytes", str(len(body)))),
            )
        return declared if declared is not None else actual

    def canonical_request(
        self, request: Request, params: SignatureParams, payload_hash: str, *, unsigned_token: bool = False
    ) -> str:
        """The canonical request text for `request` as the signer must have built it.

        `unsigned_token`: the presigned URL's X-Amz-Security-Token was appended after signing (AWS's "after" style).
        """
        path, _, query = request.raw_path.partition("?")
        if "+" in query:
            # The canonical query reads a raw '+' as a plus (as AWS does), every upstream decodes it as a space:
            # `to=a+b` and `to=a%2Bb` would share a signature and mean different things. SDKs encode both.
            raise MalformedSignature("A raw '+' in the query string is ambiguous: encode it as %2B or %20")
        opts = self.options
        uri = remembered_path(path, opts.normalize_path, opts.double_encode)
        if params.presigned:
            canonical_qs = canonical_query(query, drop_signature=True, drop_token=unsigned_token)
        else:
            canonical_qs = remembered_query(query)
        try:
            headers_block = canonical_headers(request.headers, params.signed_headers)
        except KeyError:
            raise MalformedSignature("A header listed in SignedHeaders is missing from the request") from None
        return f"{request.method}\n{uri}\n{canonical_qs}\n{headers_block}\n{params.signed_headers_text}\n{payload_hash}"

    def verify(self, request: Request) -> Verified:
        """Verify `request`'s signature at `request.time`; raise `Denied` with an AWS reason if it does not hold."""
        try:
            return self._verify(request)
        except MalformedSignature as exc:
            raise self._deny(INCOMPLETE_SIGNATURE, str(exc)) from None
        except UnicodeError:  # text that is not encodable (lone surrogates): nothing a real signer produces
            raise self._deny(INCOMPLETE_SIGNATURE, "The request contains characters that cannot be signed") from None

    def _verify(self, request: Request) -> Verified:
        now = request.time or time.time()
        query = request.raw_path.partition("?")[2]
        params = self._signature_params(request, query)
        amz_date, signed_at = self._request_date(request, params)
        self._check_scope(request, params, amz_date)
        ttl = self._check_time(params, signed_at, now)
        credential, snapshot = self._credential(request, params, now)
        payload_hash = self._payload_hash(request)
        sts = self._string_to_sign(request, params, amz_date, payload_hash, unsigned_token=False)
        unsigned_token = False
        if not self._signature_matches(params, credential, snapshot, sts):
            # What this sidecar computed, for `check --explain` only (built if called: `_mismatch_step`).
            computed = partial(self._mismatch_step, request, params, amz_date, payload_hash, credential)
            # A presigned URL may carry a session token appended after signing; try without it (AWS accepts
            # both styles) unless this authorizer insists on signed tokens.
            retry = (
                params.presigned and params.security_token is not None and not self.options.require_signed_session_token
            )
            if not retry:
                raise self._mismatch(partial(computed, False))
            unsigned_token = True
            sts = self._string_to_sign(request, params, amz_date, payload_hash, unsigned_token=True)
            if not self._signature_matches(params, credential, snapshot, sts):
                raise self._mismatch(partial(computed, True))
        if params.algorithm == HMAC_ALGORITHM:
            replay_key = f"{credential.access_key_id}:{params.signature}"
        else:
            # ECDSA signatures are malleable, so a replay is recognized by what was signed, not by the signature.
            replay_key = f"{credential.access_key_id}:a:{hashlib.sha256(sts).hexdigest()}"
        return Verified(credential, snapshot, params, replay_key, max(1.0, ttl), now, unsigned_token)

    def _mismatch(self, explain: Explainer) -> Denied:
        """InvalidSignature for a signature that does not match, in AWS's words; `explain` says what was computed."""
        return Denied(INVALID_SIGNATURE, MSG_BAD_SIGNATURE, self.options.deny_status, explain=explain)

    def _mismatch_step(
        self,
        request: Request,
        params: SignatureParams,
        amz_date: str,
        payload_hash: str,
        credential: Credential,
        retried: bool,
    ) -> Step:
        """What AWS's SignatureDoesNotMatch says, for `check --explain` only: the canonical request and the string
        to sign this sidecar computed, in AWS's words, so the client can diff them with its own (botocore logs its
        own at DEBUG). Identical texts mean the secret key differs; otherwise the first differing line names the
        part (path encoding, query order, a header's value, the payload hash)."""
        creq = self.canonical_request(request, params, payload_hash, unsigned_token=False)
        sts = self._string_to_sign(request, params, amz_date, payload_hash, unsigned_token=False)
        facts: list[Fact] = [
            ("access_key_id", credential.access_key_id),
            ("principal", credential.principal_arn),
            ("algorithm", params.algorithm),
            ("credential_scope", shown_value(params.scope)),
            ("signed_headers", shown_value(params.signed_headers_text)),
        ]
        if retried:
            facts.append(("also_tried", "without the X-Amz-Security-Token appended after signing (AWS accepts both)"))
        shown, masked = _without_session_token(creq)
        if masked:
            facts.append(("note", "the session token is shown as its length and SHA-256 prefix, never its value"))
        details = (
            "The Canonical String for this request should have been",
            *f"'{shown}'".split("\n"),
            "",
            "The String-to-Sign should have been",
            *f"'{sts.decode('utf-8', 'surrogatepass')}'".split("\n"),
        )
        return refused(INVALID_SIGNATURE, MSG_BAD_SIGNATURE, *facts, details=details)

    def _string_to_sign(
        self, request: Request, params: SignatureParams, amz_date: str, payload_hash: str, *, unsigned_token: bool
    ) -> bytes:
        creq = self.canonical_request(request, params, payload_hash, unsigned_token=unsigned_token)
        creq_hash = hashlib.sha256(creq.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{params.algorithm}\n{amz_date}\n{params.scope}\n{creq_hash}".encode("utf-8", "surrogatepass")

    @staticmethod
    def _signature_matches(
        params: SignatureParams, credential: Credential, snapshot: CredentialSet, sts: bytes
    ) -> bool:
        if params.algorithm == HMAC_ALGORITHM:
            key = snapshot.signing_key(credential, params.scope_date, params.scope_region, params.scope_service)
            expected = hmac.new(key, sts, hashlib.sha256).hexdigest().encode()
            return hmac.compare_digest(expected, params.signature.encode("utf-8", "surrogatepass"))
        return sigv4a.verify(snapshot.ecdsa_public_key(credential), params.signature, sts)


_TOKEN_HEADER = "x-amz-security-token:"
_TOKEN_PARAM = "X-Amz-Security-Token="


def _without_session_token(creq: str) -> tuple[str, bool]:
    """A canonical request to show, its session token (a credential, signed as a header or a query parameter)
    replaced by `<N chars, sha256 PREFIX>`: a client can still compare its own by hashing it. Whether any was."""
    lines = creq.split("\n")
    masked = False
    for index, line in enumerate(lines):
        if line.startswith(_TOKEN_HEADER):
            lines[index] = _TOKEN_HEADER + _token_mark(line[len(_TOKEN_HEADER) :])
            masked = True
        elif index == 2 and _TOKEN_PARAM in line:  # the canonical query string
            params = line.split("&")
            for position, param in enumerate(params):
                if param.startswith(_TOKEN_PARAM):
                    params[position] = _TOKEN_PARAM + _token_mark(param[len(_TOKEN_PARAM) :])
                    masked = True
            lines[index] = "&".join(params)
    return "\n".join(lines), masked


def _token_mark(value: str) -> str:
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"<{len(value)} chars, sha256 {digest}>"


def _times(signed_at: float, now: float, skew: float) -> tuple[Fact, ...]:
    """The facts of a time refusal (`check --explain`)."""
    return (("signed_at", when(signed_at)), ("judged_at", when(now)), ("clock_skew", f"{skew:g} s"))

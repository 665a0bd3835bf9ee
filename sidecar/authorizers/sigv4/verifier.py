"""Checking one request's SigV4 / SigV4a signature: pure and synchronous, no I/O (the authorizer wraps it).

The canonical request is rebuilt from what Envoy forwards (`canonical.py`) and the signature checked against a key
from the credential snapshot (`credentials.py`). Hot path cost is one canonical request, one SHA-256 and one HMAC:
signing keys are derived once per (access key, date, region, service) and kept with the credential snapshot,
SigV4a public keys once per access key. Failures are `Denied` with the AWS error names and texts that API Gateway
users know (`IncompleteSignature`, `InvalidSignature`, ...), all 403 by default as API Gateway sends them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

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


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%dT%H%M%SZ")


class SigV4Verifier:
    """Checks one request's SigV4/SigV4a signature. Pure and synchronous: `authenticate` wraps it."""

    def __init__(self, store: CredentialStore, options: VerifierOptions) -> None:
        self.store = store
        self.options = options
        self._regions = tuple(sorted(options.regions))

    # -- errors ------------------------------------------------------------------------------------------------

    def _deny(self, reason: str, message: str, status: int | None = None) -> Denied:
        return Denied(reason, message, status or self.options.deny_status)

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
        raise self._deny(MISSING_AUTHENTICATION_TOKEN, MSG_MISSING)

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
            raise self._deny(
                INVALID_SIGNATURE,
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.",
            )
        if params.scope_terminator != TERMINATOR:
            raise self._deny(INVALID_SIGNATURE, f"Credential should be scoped with a valid terminator: '{TERMINATOR}'.")
        if params.scope_service != opts.service:
            raise self._deny(INVALID_SIGNATURE, f"Credential should be scoped to correct service: '{opts.service}'.")
        if params.algorithm == HMAC_ALGORITHM:
            if params.scope_region not in opts.regions:
                raise self._deny(INVALID_SIGNATURE, "Credential should be scoped to a valid region.")
            return ""
        region_set = params.region_set if params.presigned else request.headers.get("x-amz-region-set")
        if not region_set:
            raise MalformedSignature("SigV4a requires the X-Amz-Region-Set header or query parameter")
        if not params.presigned and "x-amz-region-set" not in params.signed_headers:
            raise MalformedSignature("'X-Amz-Region-Set' must be a 'SignedHeader' in the AWS Authorization.")
        if not sigv4a.region_set_matches(region_set, self._regions):
            raise self._deny(INVALID_SIGNATURE, "X-Amz-Region-Set does not include a region this API serves.")
        return region_set

    def _check_time(self, params: SignatureParams, signed_at: float, now: float) -> float:
        """Clock-skew and expiry checks; returns how long the signature stays valid from `now` (the replay TTL)."""
        skew = self.options.clock_skew
        if signed_at - now > skew:
            raise self._deny(
                REQUEST_TIME_TOO_SKEWED,
                f"Signature not yet current: {_iso(signed_at)} is still later "
                f"than {_iso(now + skew)} ({_iso(now)} + {skew / 60:g} min.)",
            )
        if not params.presigned:
            if now - signed_at > skew:
                raise self._deny(
                    SIGNATURE_EXPIRED,
                    f"Signature expired: {_iso(signed_at)} is now earlier than "
                    f"{_iso(now - skew)} ({_iso(now)} - {skew / 60:g} min.)",
                )
            return signed_at + skew - now
        if not _DIGITS.match(params.expires):
            raise MalformedSignature("X-Amz-Expires must be a whole number of seconds")
        expires = int(params.expires)
        if expires < 1 or expires > self.options.max_expires:
            raise MalformedSignature(f"X-Amz-Expires must be between 1 and {self.options.max_expires} seconds")
        if now > signed_at + expires:
            raise self._deny(
                SIGNATURE_EXPIRED, f"Signature expired: the presigned URL expired at {_iso(signed_at + expires)}"
            )
        return signed_at + expires - now

    def _credential(self, request: Request, params: SignatureParams, now: float) -> tuple[Credential, CredentialSet]:
        snapshot = self.store.current
        credential = snapshot.get(params.access_key_id)
        if credential is None:
            raise self._deny(UNRECOGNIZED_CLIENT, MSG_BAD_TOKEN)
        if not credential.enabled:
            raise self._deny(INVALID_CLIENT_TOKEN_ID, MSG_BAD_TOKEN)
        if credential.expires_at is not None and now >= credential.expires_at:
            raise self._deny(EXPIRED_TOKEN, MSG_EXPIRED_TOKEN)
        token = params.security_token if params.presigned else request.headers.get("x-amz-security-token")
        if credential.session_token is None:
            if token is not None:
                raise self._deny(INVALID_CLIENT_TOKEN_ID, MSG_BAD_TOKEN)
        else:
            if token is None or not hmac.compare_digest(
                token.encode("utf-8", "surrogatepass"), credential.session_token.encode()
            ):
                raise self._deny(INVALID_CLIENT_TOKEN_ID, MSG_BAD_TOKEN)
            if (
                self.options.require_signed_session_token
                and not params.presigned
                and "x-amz-security-token" not in params.signed_headers
            ):
                raise MalformedSignature("'X-Amz-Security-Token' must be a 'SignedHeader' in the AWS Authorization.")
        return credential, snapshot

    def _payload_hash(self, request: Request) -> str:
        declared = request.headers.get("x-amz-content-sha256")
        partial = request.headers.get(PARTIAL_BODY_HEADER, "").lower() == "true"
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
        if partial:
            raise self._deny(PARTIAL_BODY, "The request body was too large to verify its signature.", 413)
        body = request.body
        actual = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        if declared is not None and declared.lower() != actual:
            raise self._deny(
                CONTENT_SHA256_MISMATCH,
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                400,
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
            # A presigned URL may carry a session token appended after signing; try without it (AWS accepts
            # both styles) unless this authorizer insists on signed tokens.
            retry = (
                params.presigned and params.security_token is not None and not self.options.require_signed_session_token
            )
            if not retry:
                raise self._deny(INVALID_SIGNATURE, MSG_BAD_SIGNATURE)
            unsigned_token = True
            sts = self._string_to_sign(request, params, amz_date, payload_hash, unsigned_token=True)
            if not self._signature_matches(params, credential, snapshot, sts):
                raise self._deny(INVALID_SIGNATURE, MSG_BAD_SIGNATURE)
        if params.algorithm == HMAC_ALGORITHM:
            replay_key = f"{credential.access_key_id}:{params.signature}"
        else:
            # ECDSA signatures are malleable, so a replay is recognized by what was signed, not by the signature.
            replay_key = f"{credential.access_key_id}:a:{hashlib.sha256(sts).hexdigest()}"
        return Verified(credential, snapshot, params, replay_key, max(1.0, ttl), now, unsigned_token)

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

"""The reasons a signed request is refused, by their AWS / API Gateway names. The shared ones come from
`sidecar.reasons`; the rest are kept here because only this authorizer raises them. A leaf of the family."""

from __future__ import annotations

from ...reasons import ACCESS_DENIED, MISSING_AUTHENTICATION_TOKEN

INCOMPLETE_SIGNATURE = "IncompleteSignature"
INVALID_SIGNATURE = "InvalidSignature"
SIGNATURE_EXPIRED = "SignatureExpired"
REQUEST_TIME_TOO_SKEWED = "RequestTimeTooSkewed"
UNRECOGNIZED_CLIENT = "UnrecognizedClient"
INVALID_CLIENT_TOKEN_ID = "InvalidClientTokenId"
EXPIRED_TOKEN = "ExpiredToken"
CONTENT_SHA256_MISMATCH = "XAmzContentSHA256Mismatch"
UNSIGNED_PAYLOAD_NOT_ALLOWED = "UnsignedPayloadNotAllowed"
PARTIAL_BODY = "PartialBody"
REPLAYED_REQUEST = "ReplayedRequest"

REASONS = (
    MISSING_AUTHENTICATION_TOKEN,
    INCOMPLETE_SIGNATURE,
    INVALID_SIGNATURE,
    SIGNATURE_EXPIRED,
    REQUEST_TIME_TOO_SKEWED,
    UNRECOGNIZED_CLIENT,
    INVALID_CLIENT_TOKEN_ID,
    EXPIRED_TOKEN,
    ACCESS_DENIED,
    CONTENT_SHA256_MISMATCH,
    UNSIGNED_PAYLOAD_NOT_ALLOWED,
    PARTIAL_BODY,
    REPLAYED_REQUEST,
)
"""Every reason this authorizer can deny with (ACCESS_DENIED is left to the policy stage)."""

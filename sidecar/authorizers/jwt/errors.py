"""The reasons a token is refused: one code per failure (documented in docs/jwt.md), and `JwtError`, which every
check of the family raises and the authorizer turns into `Denied`. A leaf: the token, claim and authorizer
modules all raise these."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...explanation import Explainer

TOKEN_MISSING = "TokenMissing"
TOKEN_MALFORMED = "TokenMalformed"
TOKEN_TOO_LARGE = "TokenTooLarge"
ALGORITHM_NONE = "AlgorithmNone"
ALGORITHM_NOT_ALLOWED = "AlgorithmNotAllowed"
KEY_ALGORITHM_MISMATCH = "KeyAlgorithmMismatch"
UNSUPPORTED_CRITICAL = "UnsupportedCritical"
UNTRUSTED_KEY_HEADER = "UntrustedKeyHeader"
UNKNOWN_KEY = "UnknownKey"
INVALID_SIGNATURE = "InvalidSignature"
KEYS_UNAVAILABLE = "KeysUnavailable"
TOKEN_EXPIRED = "TokenExpired"
TOKEN_NOT_YET_VALID = "TokenNotYetValid"
TOKEN_ISSUED_IN_FUTURE = "TokenIssuedInFuture"
CLAIM_MISSING = "ClaimMissing"
INVALID_CLAIM = "InvalidClaim"
INVALID_ISSUER = "InvalidIssuer"
INVALID_AUDIENCE = "InvalidAudience"
INVALID_TOKEN_USE = "InvalidTokenUse"

REASONS = frozenset(
    {
        TOKEN_MISSING,
        TOKEN_MALFORMED,
        TOKEN_TOO_LARGE,
        ALGORITHM_NONE,
        ALGORITHM_NOT_ALLOWED,
        KEY_ALGORITHM_MISMATCH,
        UNSUPPORTED_CRITICAL,
        UNTRUSTED_KEY_HEADER,
        UNKNOWN_KEY,
        INVALID_SIGNATURE,
        KEYS_UNAVAILABLE,
        TOKEN_EXPIRED,
        TOKEN_NOT_YET_VALID,
        TOKEN_ISSUED_IN_FUTURE,
        CLAIM_MISSING,
        INVALID_CLAIM,
        INVALID_ISSUER,
        INVALID_AUDIENCE,
        INVALID_TOKEN_USE,
    }
)


class JwtError(Exception):
    """A token failed a check; `reason` is one of the codes above. Turned into `Denied` by the authorizer, with
    `explain` (what was checked and found, built only under `check --explain`: `Denied.explain`)."""

    def __init__(self, reason: str, message: str, explain: Explainer | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.explain = explain

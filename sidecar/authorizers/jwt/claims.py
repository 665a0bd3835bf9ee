"""What a verified token's claims must say, and what they become: rules, JSON types, header values, policy keys.

Claims are validated only after the signature verifies: `iss` exact, `aud` any-of (or `client_id`), `exp`
required, `nbf`/`iat` not in the future, all with a leeway; Cognito's rules add `token_use`, access tokens matched
by `client_id`, ID tokens by `aud`. Every claim the sidecar reads must have its JSON type (`iss` a string, `aud` a
string or a list of strings, ...), and every value that leaves in a header (the principal id, `claim_to_headers`)
must be one Envoy and the upstream take as it is (no control characters, no white space at either end): both are
checked once, when the principal is built, and anything else is an `InvalidClaim` deny, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from ...explanation import Step, duration, listed, refused, shown_value, when
from ...request import header_safe
from .errors import (
    CLAIM_MISSING,
    INVALID_AUDIENCE,
    INVALID_CLAIM,
    INVALID_ISSUER,
    INVALID_TOKEN_USE,
    TOKEN_EXPIRED,
    TOKEN_ISSUED_IN_FUTURE,
    TOKEN_NOT_YET_VALID,
    JwtError,
)

_ABSENT: Any = object()


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim, None when absent. An integer is returned as the claim's own object (no float per cached
    token). `null`, any other JSON type, and a number beyond `_MAX_NUMERIC_DATE` are refused."""
    value = claims.get(name, _ABSENT)
    if value is _ABSENT:
        return None
    if type(value) is int:
        if abs(value) > _MAX_NUMERIC_DATE:
            raise JwtError(INVALID_CLAIM, f"'{name}' must be a NumericDate")
        return value
    if type(value) is not float or not abs(value) <= _MAX_NUMERIC_DATE:  # also NaN, which JSON cannot carry anyway
        raise JwtError(INVALID_CLAIM, f"'{name}' must be a NumericDate")
    return value


_MAX_NUMERIC_DATE = 2**53
"""Past this an integer is no longer exactly a float; no real date is anywhere near (year ~285 million)."""

STRING_CLAIMS = ("iss", "sub", "client_id", "scope")
"""Claims read as one string (when present: `null` or another JSON type is `InvalidClaim`)."""
STRING_OR_LIST_CLAIMS = ("aud", "scp")
"""Claims read as a string or a list of strings."""
COGNITO_STRING_CLAIMS = ("token_use", "username", "cognito:username")
COGNITO_STRING_OR_LIST_CLAIMS = ("cognito:groups",)


def check_claim_types(claims: Mapping[str, Any], strings: tuple[str, ...], strings_or_lists: tuple[str, ...]) -> None:
    """Refuse (`InvalidClaim`) a claim the sidecar reads whose JSON type is not the one it must have. Absent claims
    pass: whether they are required is decided by the rule that reads them."""
    for name in strings:
        value = claims.get(name, _ABSENT)
        if value is not _ABSENT and type(value) is not str:
            raise JwtError(INVALID_CLAIM, f"'{name}' must be a string")
    for name in strings_or_lists:
        value = claims.get(name, _ABSENT)
        if value is _ABSENT or type(value) is str:
            continue
        if type(value) is not list or not all(type(item) is str for item in value):
            raise JwtError(INVALID_CLAIM, f"'{name}' must be a string or a list of strings")


def _strings(value: Any) -> tuple[str, ...]:
    """A claim that may be one string or a list of strings (aud, scp); anything else yields nothing."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


_SCOPE_SETS: dict[str, frozenset[str]] = {}
_MAX_SCOPE_SETS = 1024


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from `scope` (space-separated, RFC 8693) and `scp` (list or string, as Okta and Azure AD send).

    The common shape, a `scope` string and no `scp`, is memoized: tokens share a handful of scope strings, and
    one shared frozenset per string keeps a set per distinct scope string, not one per cached token.
    """
    scope = claims.get("scope")
    if type(scope) is str and "scp" not in claims:
        found = _SCOPE_SETS.get(scope)
        if found is None:
            found = frozenset(scope.split())
            if len(_SCOPE_SETS) < _MAX_SCOPE_SETS:
                _SCOPE_SETS[scope] = found
        return found
    scopes: set[str] = set()
    if isinstance(scope, str):
        scopes.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        scopes.update(scp.split())
    elif isinstance(scp, list):
        scopes.update(s for s in scp if isinstance(s, str))
    return frozenset(scopes)


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """What a verified token's claims must say. `token_uses` is Cognito's rule set (None for plain `jwt`)."""

    issuer: str
    audiences: frozenset[str]
    leeway: float
    token_uses: frozenset[str] | None = None

    def check(self, claims: Mapping[str, Any], now: float) -> float:
        """Validate the claims at time `now`; return `exp`. Claim types are checked before any rule reads them."""
        exp = _number(claims, "exp")
        if exp is None:
            raise JwtError(CLAIM_MISSING, "the token has no 'exp'")
        nbf = _number(claims, "nbf")
        iat = _number(claims, "iat")
        check_claim_types(claims, STRING_CLAIMS, STRING_OR_LIST_CLAIMS)
        if self.token_uses is not None:
            check_claim_types(claims, COGNITO_STRING_CLAIMS, COGNITO_STRING_OR_LIST_CLAIMS)
        if now >= exp + self.leeway:
            raise JwtError(TOKEN_EXPIRED, "the token has expired", partial(self._late, exp, now))
        if nbf is not None and nbf > now + self.leeway:
            raise JwtError(
                TOKEN_NOT_YET_VALID,
                "the token is not valid yet (nbf)",
                partial(self._early, TOKEN_NOT_YET_VALID, "the token is not valid yet (nbf)", "nbf", nbf, now),
            )
        if iat is not None and iat > now + self.leeway:
            raise JwtError(
                TOKEN_ISSUED_IN_FUTURE,
                "the token was issued in the future (iat)",
                partial(
                    self._early, TOKEN_ISSUED_IN_FUTURE, "the token was issued in the future (iat)", "iat", iat, now
                ),
            )
        if claims.get("iss") != self.issuer:
            raise JwtError(INVALID_ISSUER, "the token comes from another issuer", partial(self._issuer, claims))
        if self.token_uses is None:
            self._check_audience(claims)
        else:
            self._check_cognito(claims)
        return exp

    # Explainers (`JwtError.explain`): called only under `check --explain`, so a refusal costs no text.

    def _late(self, exp: float, now: float) -> Step:
        return refused(
            TOKEN_EXPIRED,
            f"the token expired {duration(now - exp)} before the time judged (leeway {self.leeway:g} s)",
            ("exp", when(exp)),
            ("judged_at", when(now)),
            ("leeway", f"{self.leeway:g} s"),
        )

    def _early(self, reason: str, message: str, claim: str, value: float, now: float) -> Step:
        return refused(
            reason,
            f"{message}: {claim} is {duration(value - now)} after the time judged (leeway {self.leeway:g} s)",
            (claim, when(value)),
            ("judged_at", when(now)),
            ("leeway", f"{self.leeway:g} s"),
        )

    def _issuer(self, claims: Mapping[str, Any]) -> Step:
        return refused(
            INVALID_ISSUER,
            "the token's iss is not this authorizer's issuer (compared exactly)",
            ("iss", _claim(claims, "iss")),
            ("expected_issuer", self.issuer),
        )

    def _audience(self, claims: Mapping[str, Any], message: str) -> Step:
        return refused(
            INVALID_AUDIENCE,
            message,
            ("aud", listed(_strings(claims.get("aud")), empty="(absent)")),
            ("client_id", _claim(claims, "client_id")),
            ("expected_audiences", listed(self.audiences) + " (any one of)"),
        )

    def _token_use(self, claims: Mapping[str, Any]) -> Step:
        assert self.token_uses is not None
        return refused(
            INVALID_TOKEN_USE,
            "the token's token_use is not one this authorizer accepts",
            ("token_use", _claim(claims, "token_use")),
            ("expected_token_use", listed(self.token_uses)),
        )

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        """API Gateway's rule: any `aud` value, or else `client_id`, must be a configured audience."""
        if self.audiences.intersection(_strings(claims.get("aud"))):
            return
        client_id = claims.get("client_id")
        if isinstance(client_id, str) and client_id in self.audiences:
            return
        message = "the token is not meant for this API (aud/client_id)"
        raise JwtError(INVALID_AUDIENCE, message, partial(self._audience, claims, message))

    def _check_cognito(self, claims: Mapping[str, Any]) -> None:
        """Cognito access tokens carry `client_id` and no `aud`; ID tokens carry `aud`."""
        assert self.token_uses is not None
        use = claims.get("token_use")
        if use not in self.token_uses:
            raise JwtError(
                INVALID_TOKEN_USE,
                f"token_use must be {' or '.join(sorted(self.token_uses))}",
                partial(self._token_use, claims),
            )
        if use == "access":
            client = claims.get("client_id")
            if not isinstance(client, str) or client not in self.audiences:
                message = "the access token was issued to another app client (client_id)"
                raise JwtError(INVALID_AUDIENCE, message, partial(self._audience, claims, message))
        elif not self.audiences.intersection(_strings(claims.get("aud"))):
            message = "the ID token was issued to another app client (aud)"
            raise JwtError(INVALID_AUDIENCE, message, partial(self._audience, claims, message))


def _claim(claims: Mapping[str, Any], name: str) -> str:
    """A claim as an explanation shows it ("(absent)" when the token has none)."""
    return shown_value(claims[name]) if name in claims else "(absent)"


def shared_values(claims: Mapping[str, Any]) -> dict[str, Any]:
    """Verified claims with their short string values replaced by an equal string seen before, so that `iss`,
    `aud`, `scope` and the like exist once for all cached tokens, not once per token.

    The table is bounded and starts over when full: values that never repeat (`sub`, `jti`) pass through it,
    values that repeat come back at once. (Interning did the same job but grew the interpreter's intern table
    for every value that never repeats.)
    """
    table = _VALUES
    out: dict[str, Any] = {}
    for name, value in claims.items():
        if type(value) is str and len(value) <= _SHARE_MAX:
            found = table.get(value)
            if found is None:
                if len(table) >= _MAX_VALUES:
                    table.clear()
                table[value] = found = value
            value = found
        out[name] = value
    return out


_SHARE_MAX = 256
_VALUES: dict[str, str] = {}
_MAX_VALUES = 4096


# -- what the claims become ---------------------------------------------------------------------------------


def principal_id(claims: Mapping[str, Any]) -> str:
    """`sub`, else `client_id` (their types are checked already); it goes upstream as `x-authz-principal`."""
    for name in ("sub", "client_id"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            if not header_safe(value):
                raise JwtError(
                    INVALID_CLAIM,
                    f"'{name}' cannot be sent upstream as it is (control characters or a space at either end)",
                )
            return value
    raise JwtError(CLAIM_MISSING, "the token has neither 'sub' nor 'client_id'")


def claim_headers(
    claims: Mapping[str, Any], claim_to_headers: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """`claim_to_headers`, each value checked once here: a value that cannot reach the upstream unchanged
    refuses the token (`InvalidClaim`) rather than allowing a request Envoy would fail."""
    headers = []
    for claim, header in claim_to_headers:
        if claim not in claims:
            headers.append((header, ""))
            continue
        try:
            value: str | None = header_value(claims[claim])
        except RecursionError:  # nested deeper than the renderer goes: no header could carry it anyway
            value = None
        if value is None or not header_safe(value):
            raise JwtError(
                INVALID_CLAIM,
                f"claim {claim[:64]!r} cannot be sent upstream as header {header} "
                "(control characters or a space at either end)",
            )
        headers.append((header, value))
    return tuple(headers)


def header_value(value: Any) -> str:
    """Render a claim for an upstream header: strings as they are, lists comma-joined, objects as JSON, other
    scalars as JSON (`true`, `null`, `42`). Nothing is removed: the caller refuses a value that is not
    `header_safe` (a claim quietly cut down could become another user's value)."""
    if type(value) is str:
        return value
    if isinstance(value, list):
        return ",".join(header_value(v) for v in value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _context_value(value: Any) -> Any:
    """Claims become policy keys when they are scalars or lists of scalars (lists become tuples)."""
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float | bool) for v in value):
        return tuple(value)
    return None


CONTEXT_PREFIX = "jwt:"


def claim_context(claims: Mapping[str, Any], scopes: frozenset[str], prefix: str = CONTEXT_PREFIX) -> dict[str, Any]:
    """Policy condition keys from verified claims: `jwt:<claim>` for each scalar or list claim, `jwt:scope` as the
    sorted tuple of scopes."""
    context: dict[str, Any] = {}
    for name, value in claims.items():
        converted = _context_value(value)
        if converted is not None:
            context[prefix + name] = converted
    context[prefix + "scope"] = tuple(sorted(scopes))
    return context


def cognito_context(claims: Mapping[str, Any], scopes: frozenset[str]) -> dict[str, Any]:
    """`claim_context` plus Cognito's `cognito:*` policy keys (groups, username, client_id, token_use)."""
    context = claim_context(claims, scopes)
    groups = claims.get("cognito:groups")
    context["cognito:groups"] = tuple(_strings(groups))
    for name in ("username", "client_id", "token_use"):
        value = claims.get(name)
        if isinstance(value, str):
            context["cognito:" + name] = value
    username = claims.get("cognito:username")
    if isinstance(username, str):
        context["cognito:username"] = username
    return context


_ContextBuilder = Callable[[Mapping[str, Any], frozenset[str]], dict[str, Any]]


class LazyContext(Mapping[str, Any]):
    """A read-only mapping built on first access. Most requests never read policy condition keys (routes without
    claim conditions), so a cold token does not pay for building them; once built, the mapping is kept with the
    cached principal. It holds its inputs rather than a closure: it lives as long as the cached token."""

    __slots__ = ("_build", "_claims", "_data", "_scopes")

    def __init__(self, build: _ContextBuilder, claims: Mapping[str, Any], scopes: frozenset[str]) -> None:
        self._build: _ContextBuilder | None = build
        self._claims = claims
        self._scopes = scopes
        self._data: dict[str, Any] | None = None

    def _resolved(self) -> dict[str, Any]:
        data = self._data
        if data is None:
            assert self._build is not None
            data = self._data = self._build(self._claims, self._scopes)
            self._build = None
        return data

    def __getitem__(self, key: str) -> Any:
        return self._resolved()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolved())

    def __len__(self) -> int:
        return len(self._resolved())

    def __repr__(self) -> str:
        return f"LazyContext({self._resolved()!r})"
